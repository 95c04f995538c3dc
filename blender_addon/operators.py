"""Generation operators: Generate (every mode, batches), Cancel, Regenerate, Use Result, Animate,
seeds, LoRAs and the prompt history. Each one has a poll (F3 search offers it only when it can
run) and reports what it did."""

from __future__ import annotations

import random
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import animation, apply, capture, conditioning, control_ui, render_files, results, scene_capture, texture_project
from .controller import ConnectRefused, controller, online_refusal, preferences
from .properties import MODES

TEXTURABLE = {"MESH", "CURVE", "SURFACE", "META", "FONT"}


def _selected_objects(context: bpy.types.Context) -> list[bpy.types.Object]:
    return [o for o in context.scene.objects if o.select_get()]


def _texturable(objects: list[bpy.types.Object]) -> list[bpy.types.Object]:
    return [o for o in objects if o.type in TEXTURABLE]


def _idle(context: bpy.types.Context) -> bool:
    scene = getattr(context, "scene", None)
    return scene is not None and hasattr(scene, "latentbridge") and not scene.latentbridge.running


def validate(context: bpy.types.Context, settings: Any, mode: str) -> None:
    """Everything that can be checked before any render or upload: raises CaptureError."""
    scene = context.scene
    prefs = preferences(context)
    refusal = online_refusal(prefs.server_url) if prefs is not None else ""
    if refusal:
        raise capture.CaptureError(refusal)
    if mode == "texture" and not _texturable(_selected_objects(context)):
        raise capture.CaptureError("Select the objects to texture first")
    if mode in ("img2img", "inpaint", "outpaint"):
        if settings.source == "IMAGE" and settings.source_image is None:
            raise capture.CaptureError("Pick a source image (Source: Image)")
        if settings.source == "RENDER" and scene.camera is None:
            raise capture.CaptureError("The scene has no active camera to render from")
    if mode == "inpaint":
        if settings.mask_source == "OBJECTS":
            if not _selected_objects(context):
                raise capture.CaptureError("Select the objects to mask first (Mask: Selected Objects)")
            if scene.camera is None:
                raise capture.CaptureError("The scene has no active camera to render the mask from")
        elif settings.mask_source == "IMAGE" and settings.mask_image is None:
            raise capture.CaptureError("Pick a painted mask image (Mask: Mask Image)")
        elif settings.mask_source == "ALPHA" and settings.source != "IMAGE":
            raise capture.CaptureError("Mask from alpha needs Source: Image")
    if mode == "outpaint" and not any((settings.outpaint_left, settings.outpaint_right, settings.outpaint_top, settings.outpaint_bottom)):
        raise capture.CaptureError("Outpaint needs at least one side to extend (Left, Right, Top or Bottom)")


def prepare(context: bpy.types.Context, settings: Any, mode: str) -> tuple[dict[str, Any], scene_capture.Inputs, list[bpy.types.Object]]:
    """(request, inputs, texture targets): one render at most for a Cycles scene (its passes
    give the selected-objects mask and the control maps), or the last render when nothing changed
    and Reuse Last Render is on. What needs encoding is made on the worker (inputs.pending)."""
    validate(context, settings, mode)
    scene = context.scene
    specs = control_ui.scene_specs(scene, mode)
    if specs and scene.camera is None:
        raise capture.CaptureError("The scene controls are rendered from the camera, and the scene has no active camera")
    targets = _texturable(_selected_objects(context)) if mode == "texture" else []
    old_mode = settings.mode
    settings.mode = mode
    try:
        request = settings.build_request(scene, settings.next_seed())
    finally:
        settings.mode = old_mode
    control_ui.check_server(specs, request["mode"])
    conditioning.add_units(request, specs)
    inputs = scene_capture.capture_inputs(context, settings, mode, request, specs, _selected_objects(context))
    return request, inputs, targets


def modal_step(client_ref: str, event_type: str, event_value: str) -> set[str]:
    """The Generate operator's modal step while its job runs: Esc cancels that job."""
    job = controller.jobs.get(client_ref)
    if job is None or job.finished:
        return {"FINISHED"}
    if event_type == "ESC" and event_value == "PRESS":
        controller.cancel(job)
        return {"FINISHED"}
    return {"PASS_THROUGH"}


class LATENTBRIDGE_OT_generate(bpy.types.Operator):
    """Generate with the settings in the Latent Bridge panel (results are packed into the file; Esc cancels)"""

    bl_idname = "latentbridge.generate"
    bl_label = "Generate"
    # No UNDO: the operator only captures and submits; results arrive later with their own undo step.
    bl_options = {"REGISTER"}

    mode: EnumProperty(
        name="Mode",
        items=[("SETTINGS", "From Settings", "The mode chosen in the panel"), *MODES],
        default="SETTINGS",
        options={"SKIP_SAVE"},
        description="Mode to generate in (default: the panel's)",
    )

    _ref = ""
    _timer = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not _idle(context):
            cls.poll_message_set("A job of this scene is running (Cancel it first)")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.latentbridge
        mode = settings.mode if self.mode == "SETTINGS" else self.mode
        try:
            request, inputs, targets = prepare(context, settings, mode)
            if inputs.note:
                self.report({"WARNING"}, inputs.note)
            preview = apply.ensure_preview_image(request["width"], request["height"])
            job = controller.submit(context, request, inputs.images, texture=mode == "texture", targets=[o.name for o in targets],
                                    pending=inputs.pending, on_prepared=control_ui.show_uploads)
        except (capture.CaptureError, ConnectRefused, render_files.RenderFileError) as exc:
            self.report({"ERROR"}, str(exc))
            settings.error = str(exc)
            return {"CANCELLED"}
        apply.show_in_image_editors(preview)
        if mode == "texture":
            apply.assign_texture(targets, preview)
        settings.remember_prompt()
        self._ref = job.client_ref
        batch = f", {request['batch_size']} images" if request.get("batch_size", 1) > 1 else ""
        self.report({"INFO"}, f"Latent Bridge: {mode} submitted (seed {request['seed']}{batch})")
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, event: Any) -> set[str]:
        result = self.execute(context)
        if result != {"FINISHED"} or context.window is None or bpy.app.background:
            return result
        self._timer = context.window_manager.event_timer_add(0.25, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: Any) -> set[str]:
        result = modal_step(self._ref, event.type, event.value)
        if result == {"FINISHED"} and self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        return result


class LATENTBRIDGE_OT_generate_texture(bpy.types.Operator):
    """Generate a seamless texture and wire it into the selected objects' material"""

    bl_idname = "latentbridge.generate_texture"
    bl_label = "Generate Texture"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not _idle(context):
            return False
        if not _texturable(_selected_objects(context)):
            cls.poll_message_set("Select the objects to texture")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        return bpy.ops.latentbridge.generate(mode="texture")

    def invoke(self, context: bpy.types.Context, event: Any) -> set[str]:
        return bpy.ops.latentbridge.generate("INVOKE_DEFAULT", mode="texture")


class LATENTBRIDGE_OT_cancel(bpy.types.Operator):
    """Cancel this scene's running generation or animation (finished frames are kept)"""

    bl_idname = "latentbridge.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        scene = getattr(context, "scene", None)
        if scene is None or (not controller.active_jobs(scene.name) and animation.running(scene.name) is None
                             and texture_project.running(scene.name) is None):
            cls.poll_message_set("Nothing is running in this scene")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        if animation.cancel(scene.name):
            self.report({"INFO"}, "Latent Bridge: animation cancelled")
            return {"FINISHED"}
        if texture_project.cancel(scene.name):
            self.report({"INFO"}, "Latent Bridge: projection cancelled; the texture is finished from the views done")
            return {"FINISHED"}
        jobs = controller.active_jobs(scene.name)
        if not any([controller.cancel(j) for j in jobs]):
            self.report({"WARNING"}, "Nothing to cancel")
            scene.latentbridge.running = False
            return {"CANCELLED"}
        if scene.latentbridge.running:
            scene.latentbridge.status = "Cancelling…"
        self.report({"INFO"}, "Latent Bridge: cancelling")
        return {"FINISHED"}


def _result_image(context: bpy.types.Context, name: str) -> bpy.types.Image | None:
    name = name or (context.scene.latentbridge.last_result if getattr(context, "scene", None) else "")
    image = bpy.data.images.get(name) if name else None
    return image if image is not None and apply.stored_request(image) is not None else None


class LATENTBRIDGE_OT_regenerate(bpy.types.Operator):
    """Generate a result again from its stored request and inputs (same seed: same image)"""

    bl_idname = "latentbridge.regenerate"
    bl_label = "Regenerate"
    bl_options = {"REGISTER"}

    image: StringProperty(name="Image", description="A Latent Bridge result; the last one when empty")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _idle(context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        name = self.image or context.scene.latentbridge.last_result
        image = _result_image(context, self.image)
        if image is None:
            self.report({"ERROR"}, f"“{name}” is not a Latent Bridge result")
            return {"CANCELLED"}
        if texture_project.is_projection(image):
            try:
                texture_project.regenerate(context, image)
            except (texture_project.ProjectTextureError, capture.CaptureError, ConnectRefused) as exc:
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
            self.report({"INFO"}, f"Latent Bridge: projecting {name} again from its recipe")
            return {"FINISHED"}
        request = apply.stored_request(image)
        images: dict[str, tuple[bytes, str]] = {}
        packed: dict[str, str] = {}
        for role, source_name in results.stored_inputs(image).items():
            source = bpy.data.images.get(source_name)
            if source is None or source.packed_file is None:
                self.report({"ERROR"}, f"The {role} image of “{name}” is missing from this file")
                return {"CANCELLED"}
            images[role] = (bytes(source.packed_file.data), "png")
            packed[role] = source.name
        texture = bool(image.get("latentbridge_texture"))
        targets = [o.name for o in _texturable(_selected_objects(context))] if texture else []
        try:
            controller.submit(context, request, images, texture=texture, targets=targets, input_images=packed)
        except ConnectRefused as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Latent Bridge: regenerating {name} (seed {request.get('seed')})")
        return {"FINISHED"}


class LATENTBRIDGE_OT_use_result(bpy.types.Operator):
    """Make this image the result (e.g. one image of a batch): shown, seed kept, texture wired"""

    bl_idname = "latentbridge.use_result"
    bl_label = "Use as Result"
    bl_options = {"REGISTER", "UNDO"}

    image: StringProperty(name="Image", description="A Latent Bridge result image")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return getattr(context, "scene", None) is not None and hasattr(context.scene, "latentbridge")

    def execute(self, context: bpy.types.Context) -> set[str]:
        image = _result_image(context, self.image) if self.image else None
        if image is None:
            self.report({"ERROR"}, f"“{self.image}” is not a Latent Bridge result")
            return {"CANCELLED"}
        results.use_result(image, context.scene)
        self.report({"INFO"}, f"Latent Bridge: {image.name} is the result (seed {image.get('latentbridge_seed')})")
        return {"FINISHED"}


class LATENTBRIDGE_OT_animate(bpy.types.Operator):
    """Generate every frame of the range from its render (img2img, one seed), as an image sequence next to the .blend"""

    bl_idname = "latentbridge.animate"
    bl_label = "Generate Animation"
    bl_options = {"REGISTER"}

    resume: BoolProperty(name="Resume", default=False, options={"SKIP_SAVE"},
                         description="Only the frames whose file is missing (continue a cancelled or failed run)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not _idle(context):
            cls.poll_message_set("A job of this scene is running (Cancel it first)")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = preferences(context)
        try:
            refusal = online_refusal(prefs.server_url) if prefs is not None else ""
            if refusal:
                raise animation.AnimationError(refusal)
            run = animation.start(context, resume=self.resume)
        except (animation.AnimationError, capture.CaptureError, ConnectRefused) as exc:
            self.report({"ERROR"}, str(exc))
            context.scene.latentbridge.error = str(exc)
            return {"CANCELLED"}
        what = "resuming" if self.resume else "starting"
        self.report({"INFO"}, f"Latent Bridge: animation {what}, {len(run.frames) + 1} frame(s) to make (seed {run.request['seed']})")
        return {"FINISHED"}


class LATENTBRIDGE_OT_random_seed(bpy.types.Operator):
    """Pick a new random seed"""

    bl_idname = "latentbridge.random_seed"
    bl_label = "Randomize Seed"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return getattr(context, "scene", None) is not None and hasattr(context.scene, "latentbridge")

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.scene.latentbridge.seed = random.randint(0, 2**31 - 1)
        self.report({"INFO"}, f"Seed {context.scene.latentbridge.seed}")
        return {"FINISHED"}


class LATENTBRIDGE_OT_reuse_seed(bpy.types.Operator):
    """Use the seed of the last result for the next generation"""

    bl_idname = "latentbridge.reuse_seed"
    bl_label = "Reuse Last Seed"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None and context.scene.latentbridge.last_seed >= 0

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.latentbridge
        settings.seed = settings.last_seed
        settings.random_seed = False
        self.report({"INFO"}, f"Seed {settings.seed} (random seed off)")
        return {"FINISHED"}


class LATENTBRIDGE_OT_lora_add(bpy.types.Operator):
    """Add a LoRA (pick its name from the server's list)"""

    bl_idname = "latentbridge.lora_add"
    bl_label = "Add LoRA"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Name", default="", options={"SKIP_SAVE"}, description="LoRA file name on the server")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return getattr(context, "scene", None) is not None and len(context.scene.latentbridge.loras) < 8

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.latentbridge
        lora = settings.loras.add()
        lora.name = self.name
        settings.lora_index = len(settings.loras) - 1
        self.report({"INFO"}, f"LoRA {self.name or '(unnamed)'} added")
        return {"FINISHED"}


class LATENTBRIDGE_OT_lora_remove(bpy.types.Operator):
    """Remove the selected LoRA"""

    bl_idname = "latentbridge.lora_remove"
    bl_label = "Remove LoRA"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None and len(context.scene.latentbridge.loras) > 0

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.latentbridge
        name = settings.loras[settings.lora_index].name if settings.lora_index < len(settings.loras) else ""
        settings.loras.remove(settings.lora_index)
        settings.lora_index = max(0, min(settings.lora_index, len(settings.loras) - 1))
        self.report({"INFO"}, f"LoRA {name or '(unnamed)'} removed")
        return {"FINISHED"}


class LATENTBRIDGE_OT_recall_prompt(bpy.types.Operator):
    """Put a prompt from this file's history back into the panel"""

    bl_idname = "latentbridge.recall_prompt"
    bl_label = "Recall Prompt"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(name="Index", default=0, min=0, description="Entry of the history (0 = the newest)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return getattr(context, "scene", None) is not None and len(context.scene.latentbridge.history) > 0

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.latentbridge
        if self.index >= len(settings.history):
            self.report({"ERROR"}, f"No prompt {self.index} in the history")
            return {"CANCELLED"}
        item = settings.history[self.index]
        settings.prompt, settings.negative_prompt = item.prompt, item.negative_prompt
        self.report({"INFO"}, f"Prompt: {item.prompt[:60]}")
        return {"FINISHED"}


classes = (
    LATENTBRIDGE_OT_generate,
    LATENTBRIDGE_OT_generate_texture,
    LATENTBRIDGE_OT_cancel,
    LATENTBRIDGE_OT_regenerate,
    LATENTBRIDGE_OT_use_result,
    LATENTBRIDGE_OT_animate,
    LATENTBRIDGE_OT_random_seed,
    LATENTBRIDGE_OT_reuse_seed,
    LATENTBRIDGE_OT_lora_add,
    LATENTBRIDGE_OT_lora_remove,
    LATENTBRIDGE_OT_recall_prompt,
)
