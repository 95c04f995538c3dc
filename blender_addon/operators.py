"""Operators: everything the add-on does is one of these."""

from __future__ import annotations

import random
from typing import Any

import bpy
from bpy.props import EnumProperty, StringProperty

from . import apply, capture, png
from .backend_process import backend_command, server_answers
from .controller import INPUT_PROPS, controller, preferences
from .properties import MODES


def _selected_objects(context: bpy.types.Context) -> list[bpy.types.Object]:
    return [o for o in context.scene.objects if o.select_get()]


def _texturable(objects: list[bpy.types.Object]) -> list[bpy.types.Object]:
    return [o for o in objects if o.type in {"MESH", "CURVE", "SURFACE", "META", "FONT"}]


def _source_png(context: bpy.types.Context, settings: Any) -> tuple[bytes, str]:
    if settings.source == "RENDER":
        return capture.render_png(context.scene), ""
    if settings.source == "VIEWPORT":
        return capture.viewport_png(context)
    if settings.source_image is None:
        raise capture.CaptureError("Pick a source image (Source: Image)")
    return capture.image_png(settings.source_image), ""


def _mask_png(context: bpy.types.Context, settings: Any, size: tuple[int, int]) -> bytes:
    if settings.mask_source == "OBJECTS":
        return capture.object_mask_png(context.scene, _selected_objects(context), size=size)
    if settings.mask_source == "IMAGE":
        if settings.mask_image is None:
            raise capture.CaptureError("Pick a painted mask image (Mask: Mask Image)")
        return capture.painted_mask_png(settings.mask_image, size)
    if settings.source != "IMAGE" or settings.source_image is None:
        raise capture.CaptureError("Mask from alpha needs Source: Image")
    return capture.alpha_mask_png(settings.source_image)


def _round8(value: int) -> int:
    return max(64, (int(value) // 8) * 8)


class LATENTBRIDGE_OT_generate(bpy.types.Operator):
    """Generate with the settings in the Latent Bridge panel (the result is packed into the file)"""

    bl_idname = "latentbridge.generate"
    bl_label = "Generate"
    # No UNDO: the operator only captures and submits; results arrive later with their own undo step.
    bl_options = {"REGISTER"}

    mode: EnumProperty(
        name="Mode",
        items=[("SETTINGS", "From Settings", "The mode chosen in the panel"), *MODES],
        default="SETTINGS",
        options={"SKIP_SAVE"},
    )

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.latentbridge
        mode = settings.mode if self.mode == "SETTINGS" else self.mode
        old_mode = settings.mode
        settings.mode = mode
        try:
            request, images, targets, note = self._prepare(context, settings, mode)
        except capture.CaptureError as exc:
            self.report({"ERROR"}, str(exc))
            settings.error = str(exc)
            return {"CANCELLED"}
        finally:
            settings.mode = old_mode
        if note:
            self.report({"WARNING"}, note)
        preview = apply.ensure_preview_image(request["width"], request["height"])
        apply.show_in_image_editors(preview)
        if mode == "texture":
            apply.assign_texture(targets, preview)
        controller.submit(context, request, images, texture=mode == "texture", targets=[o.name for o in targets])
        self.report({"INFO"}, f"Latent Bridge: {mode} submitted (seed {request['seed']})")
        return {"FINISHED"}

    def _prepare(self, context: bpy.types.Context, settings: Any, mode: str) -> tuple[dict[str, Any], dict[str, tuple[bytes, str]], list[bpy.types.Object], str]:
        scene = context.scene
        targets: list[bpy.types.Object] = []
        if mode == "texture":
            targets = _texturable(_selected_objects(context))
            if not targets:
                raise capture.CaptureError("Select the objects to texture first")
        request = settings.build_request(scene, settings.next_seed())
        images: dict[str, tuple[bytes, str]] = {}
        note = ""
        if mode in ("img2img", "inpaint", "outpaint"):
            init, note = _source_png(context, settings)
            images["init"] = (init, "png")
            size = png.png_size(init)
            if settings.size_mode == "RENDER":
                request["width"], request["height"] = _round8(size[0]), _round8(size[1])
            if mode == "inpaint":
                images["mask"] = (_mask_png(context, settings, size), "png")
        if mode == "outpaint" and not any(request["outpaint"].values()):
            raise capture.CaptureError("Outpaint needs at least one side to extend")
        return request, images, targets, note


class LATENTBRIDGE_OT_generate_texture(bpy.types.Operator):
    """Generate a seamless texture and wire it into the selected objects' material"""

    bl_idname = "latentbridge.generate_texture"
    bl_label = "Generate Texture"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        return bpy.ops.latentbridge.generate(mode="texture")


class LATENTBRIDGE_OT_cancel(bpy.types.Operator):
    """Cancel the running generation"""

    bl_idname = "latentbridge.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        jobs = [j for j in controller.active_jobs() if j.scene == context.scene.name]
        if not any([controller.cancel(j) for j in jobs]):
            self.report({"WARNING"}, "Nothing to cancel")
            context.scene.latentbridge.running = False
            return {"CANCELLED"}
        context.scene.latentbridge.status = "Cancelling…"
        return {"FINISHED"}


class LATENTBRIDGE_OT_regenerate(bpy.types.Operator):
    """Generate a result again from its stored request and inputs (same seed: same image)"""

    bl_idname = "latentbridge.regenerate"
    bl_label = "Regenerate"
    bl_options = {"REGISTER"}

    image: StringProperty(name="Image", description="A Latent Bridge result; the last one when empty")

    def execute(self, context: bpy.types.Context) -> set[str]:
        name = self.image or context.scene.latentbridge.last_result
        image = bpy.data.images.get(name)
        request = apply.stored_request(image) if image is not None else None
        if request is None:
            self.report({"ERROR"}, f"“{name}” is not a Latent Bridge result")
            return {"CANCELLED"}
        images: dict[str, tuple[bytes, str]] = {}
        for role, prop in INPUT_PROPS.items():
            source = bpy.data.images.get(image.get(prop, ""))
            if image.get(prop) and (source is None or source.packed_file is None):
                self.report({"ERROR"}, f"The {role} image of “{name}” is missing from this file")
                return {"CANCELLED"}
            if source is not None:
                images[role] = (bytes(source.packed_file.data), "png")
        texture = bool(image.get("latentbridge_texture"))
        targets = [o.name for o in _texturable(_selected_objects(context))] if texture else []
        controller.submit(context, request, images, texture=texture, targets=targets)
        self.report({"INFO"}, f"Latent Bridge: regenerating {name} (seed {request.get('seed')})")
        return {"FINISHED"}


class LATENTBRIDGE_OT_random_seed(bpy.types.Operator):
    """Pick a new random seed"""

    bl_idname = "latentbridge.random_seed"
    bl_label = "Randomize Seed"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.scene.latentbridge.seed = random.randint(0, 2**31 - 1)
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
        return {"FINISHED"}


class LATENTBRIDGE_OT_lora_add(bpy.types.Operator):
    """Add a LoRA"""

    bl_idname = "latentbridge.lora_add"
    bl_label = "Add LoRA"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.latentbridge
        settings.loras.add()
        settings.lora_index = len(settings.loras) - 1
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
        settings.loras.remove(settings.lora_index)
        settings.lora_index = max(0, min(settings.lora_index, len(settings.loras) - 1))
        return {"FINISHED"}


class LATENTBRIDGE_OT_connect(bpy.types.Operator):
    """Connect to the Latent Bridge server set in the add-on preferences"""

    bl_idname = "latentbridge.connect"
    bl_label = "Connect"

    def execute(self, context: bpy.types.Context) -> set[str]:
        conn = controller.connect_from_prefs(context, force=True)
        self.report({"INFO"}, f"Latent Bridge: connecting to {conn.url}")
        return {"FINISHED"}


class LATENTBRIDGE_OT_disconnect(bpy.types.Operator):
    """Close the connection to the server"""

    bl_idname = "latentbridge.disconnect"
    bl_label = "Disconnect"

    def execute(self, context: bpy.types.Context) -> set[str]:
        controller.disconnect()
        return {"FINISHED"}


class LATENTBRIDGE_OT_refresh_models(bpy.types.Operator):
    """List the models the server offers"""

    bl_idname = "latentbridge.refresh_models"
    bl_label = "Refresh Models"

    def execute(self, context: bpy.types.Context) -> set[str]:
        controller.connect_from_prefs(context).refresh_models()
        return {"FINISHED"}


class LATENTBRIDGE_OT_start_backend(bpy.types.Operator):
    """Start a local Latent Bridge backend with the command from the preferences"""

    bl_idname = "latentbridge.start_backend"
    bl_label = "Start Local Backend"

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = preferences(context)
        if prefs is None:
            self.report({"ERROR"}, "Latent Bridge preferences are not available")
            return {"CANCELLED"}
        if not controller.backend.running and server_answers(prefs.server_url):
            self.report({"INFO"}, f"A server already answers at {prefs.server_url}: connecting to it")
            controller.connect_from_prefs(context)
            return {"FINISHED"}
        controller.backend.start(backend_command(prefs.backend_command, prefs.python_path, prefs.server_url))
        status = controller.backend.status()
        if not controller.backend.running:
            self.report({"ERROR"}, status)
            return {"CANCELLED"}
        self.report({"INFO"}, f"Latent Bridge backend: {status}")
        controller.connect_from_prefs(context)
        return {"FINISHED"}


class LATENTBRIDGE_OT_stop_backend(bpy.types.Operator):
    """Stop the local backend this add-on started"""

    bl_idname = "latentbridge.stop_backend"
    bl_label = "Stop Local Backend"

    def execute(self, context: bpy.types.Context) -> set[str]:
        controller.backend.stop()
        return {"FINISHED"}


class LATENTBRIDGE_OT_report_message(bpy.types.Operator):
    """Put a message from the network side into the Info log"""

    bl_idname = "latentbridge.report_message"
    bl_label = "Latent Bridge Message"
    bl_options = {"INTERNAL"}

    level: EnumProperty(items=[(k, k, "") for k in ("INFO", "WARNING", "ERROR")], default="INFO")
    message: StringProperty()

    def execute(self, context: bpy.types.Context) -> set[str]:
        self.report({self.level}, f"Latent Bridge: {self.message}")
        return {"FINISHED"}


classes = (
    LATENTBRIDGE_OT_generate,
    LATENTBRIDGE_OT_generate_texture,
    LATENTBRIDGE_OT_cancel,
    LATENTBRIDGE_OT_regenerate,
    LATENTBRIDGE_OT_random_seed,
    LATENTBRIDGE_OT_reuse_seed,
    LATENTBRIDGE_OT_lora_add,
    LATENTBRIDGE_OT_lora_remove,
    LATENTBRIDGE_OT_connect,
    LATENTBRIDGE_OT_disconnect,
    LATENTBRIDGE_OT_refresh_models,
    LATENTBRIDGE_OT_start_backend,
    LATENTBRIDGE_OT_stop_backend,
    LATENTBRIDGE_OT_report_message,
)
