"""Project Texture in Blender: its settings (`scene.latentbridge_projection`), the plan a run
follows (views, requests, seeds, sizes), the operator `latentbridge.project_texture`, the lists
of picked cameras and per-view prompts, and the sub-panel.

The main panel's prompt, negative prompt, seed, steps, guidance, sampler, model and LoRAs are
shared by every view; a view adds its direction ("back view") and its own words when given.
"""

from __future__ import annotations

import math
from typing import Any

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import conditioning, texture_project, texture_views, uv_render, views
from .capture import CaptureError
from .control_ui import LATENTBRIDGE_PG_view_controls, check_server, draw_controls
from .controller import ConnectRefused, controller, online_refusal, preferences
from .feedback import ICONS
from .multiview import grid_layout

VIEW_SOURCES = [
    ("ORBIT", "Around the Objects", "Views placed around the objects' bounding sphere (Count, Elevation, Top, Bottom)"),
    ("ACTIVE", "Active Camera", "The scene's active camera only"),
    ("CAMERAS", "Picked Cameras", "The cameras in the list below"),
]
FILLS = [
    ("NEIGHBOURS", "From Neighbours", "Fill texels no view saw from the painted texels around them (fast)"),
    ("INPAINT", "Inpaint (Backend)", "Inpaint texels no view saw in UV space through the server (slower)"),
]
CONTROL_KINDS = ("depth", "normal", "edges")  # what a view's UV render gives maps for
FILL_SIDE = 1024  # the UV-space inpaint runs at most at this size (then upscaled into the holes)


def _is_camera(self: Any, obj: bpy.types.Object) -> bool:
    return obj.type == "CAMERA"


class LATENTBRIDGE_PG_projection_camera(bpy.types.PropertyGroup):
    camera: PointerProperty(name="Camera", type=bpy.types.Object, poll=_is_camera, description="A camera to project from")


class LATENTBRIDGE_PG_view_prompt(bpy.types.PropertyGroup):
    text: StringProperty(name="Words", description="Added to the main prompt for this view (e.g. 'back view, zipper')")


class LATENTBRIDGE_PG_projection(bpy.types.PropertyGroup):
    views: EnumProperty(name="Views", items=VIEW_SOURCES, default="ORBIT", description="Where the views are generated from")
    cameras: CollectionProperty(type=LATENTBRIDGE_PG_projection_camera, description="The cameras to project from")
    camera_index: IntProperty(default=0, description="The selected camera of the list")
    view_count: IntProperty(name="Count", default=4, min=1, max=16, description="Views evenly around the objects")
    elevation: FloatProperty(name="Elevation", default=math.radians(15.0), min=math.radians(-80.0), max=math.radians(80.0),
                             subtype="ANGLE", description="How far above the objects' centre the orbit views look from")
    azimuth: FloatProperty(name="Start Angle", default=0.0, subtype="ANGLE",
                           description="Where the first orbit view is, counter-clockwise from the front (−Y)")
    top: BoolProperty(name="Top", default=False, description="Add a view from straight above")
    bottom: BoolProperty(name="Bottom", default=False, description="Add a view from straight below")
    lens: FloatProperty(name="Lens", default=50.0, min=10.0, max=300.0, unit="CAMERA",
                        description="Focal length of the orbit views (on a 36 mm sensor)")
    view_size: IntProperty(name="View Size", default=512, min=64, max=2048, step=8,
                           description="Longest side of each generated view in pixels (a multiple of 8)")
    supersample: IntProperty(name="UV Samples", default=2, min=1, max=4,
                             description="UV render pixels per view pixel (per axis): more fills large textures densely")
    texture_size: IntProperty(name="Texture Size", default=2048, min=64, max=8192,
                              description="Width and height of each object's baked texture (1024-4096 typical)")
    margin: IntProperty(name="Margin", default=16, min=0, max=256,
                        description="Texels the texture is dilated past its UV islands (no seams in mipmaps)")
    fill: EnumProperty(name="Fill", items=FILLS, default="NEIGHBOURS", description="How texels no view saw are filled")
    consistent: BoolProperty(name="Consistent Views", default=True,
                             description="Generate views in order, each from what earlier views painted (init image) with the unpainted part as its inpaint mask")
    grid: BoolProperty(name="All Views at Once", default=False,
                       description="Generate every view in one image (a grid of the views' control maps): faster, no consistent views")
    seam_blend: IntProperty(name="Seam Blend", default=8, min=0, max=64,
                            description="Pixels the unpainted region of a consistent view grows into the painted one (blends the seam)")
    strength: FloatProperty(name="Repaint Strength", default=1.0, min=0.05, max=1.0,
                            description="Denoising strength of a consistent view's unpainted region (1 = new paint)")
    direction_words: BoolProperty(name="Direction Words", default=True,
                                  description="Add where each view looks from to its prompt ('front view', 'back view', 'top view', …)")
    view_prompts: CollectionProperty(type=LATENTBRIDGE_PG_view_prompt, description="Words added to the prompt of view 1, 2, …")
    view_prompt_index: IntProperty(default=0, description="The selected view prompt")
    smart_uv: BoolProperty(name="Smart UV Project", default=False,
                           description="Give objects without a UV map one by Smart UV Project first")
    controls: PointerProperty(type=LATENTBRIDGE_PG_view_controls, name="View Controls",
                              description="ControlNet maps of every view, from its UV render's exact passes")


def _render_size(scene: bpy.types.Scene) -> tuple[int, int]:
    scale = scene.render.resolution_percentage / 100.0
    return max(1, round(scene.render.resolution_x * scale)), max(1, round(scene.render.resolution_y * scale))


def _round8(value: float) -> int:
    return max(64, int(value) // 8 * 8)


def _selected_meshes(context: bpy.types.Context) -> list[bpy.types.Object]:
    return [o for o in context.scene.objects if o.select_get() and o.type == "MESH"]


def _limits() -> dict[str, int]:
    hello = controller.connection.server_hello if controller.connection is not None else None
    return ((hello or {}).get("capabilities") or {}).get("limits") or {}


def _cameras(scene: bpy.types.Scene, proj: Any, objects: list[bpy.types.Object]) -> tuple[list[views.ViewCamera], tuple[int, int], Any]:
    """The views (ViewCameras at the generated size), that size, and the objects' centre."""
    center, radius = views.bounding_sphere(uv_render.world_points(objects))
    size = _round8(proj.view_size)
    if proj.views == "ORBIT":
        cameras = views.orbit_views(center, radius, proj.view_count, elevation_deg=math.degrees(proj.elevation),
                                    azimuth_deg=math.degrees(proj.azimuth), top=proj.top, bottom=proj.bottom,
                                    width=size, height=size, lens=proj.lens)
        return cameras, (size, size), center
    if proj.views == "ACTIVE":
        if scene.camera is None or scene.camera.type != "CAMERA":
            raise texture_project.ProjectTextureError("The scene has no active camera (Views: Active Camera)")
        objects_ = [scene.camera]
    else:
        objects_ = [item.camera for item in proj.cameras if item.camera is not None]
        if not objects_:
            raise texture_project.ProjectTextureError("Pick the cameras to project from (Views: Picked Cameras)")
    rw, rh = _render_size(scene)
    width, height = (size, _round8(size * rh / rw)) if rw >= rh else (_round8(size * rw / rh), size)
    return [uv_render.view_camera(c, width, height) for c in objects_], (width, height), center


def build_plan(context: bpy.types.Context) -> texture_project.Plan:
    """The plan of a Project Texture from the panel's settings; checks everything it can before
    any render (raises ProjectTextureError / CaptureError with the reason)."""
    scene = context.scene
    settings, proj = scene.latentbridge, scene.latentbridge_projection
    prefs = preferences(context)
    refusal = online_refusal(prefs.server_url) if prefs is not None else ""
    if refusal:
        raise texture_project.ProjectTextureError(refusal)
    objects = _selected_meshes(context)
    if not objects:
        raise texture_project.ProjectTextureError("Select the mesh objects to texture first")
    for obj in objects:
        if not obj.data.uv_layers:
            if not proj.smart_uv:
                raise texture_project.ProjectTextureError(f"“{obj.name}” has no UV map: unwrap it, or tick Smart UV Project")
            uv_render.smart_uv_project(obj)
    try:
        specs = proj.controls.specs(CONTROL_KINDS)
    except conditioning.ConditioningError as exc:
        raise texture_project.ProjectTextureError(str(exc)) from None
    check_server(specs, "inpaint" if proj.consistent and not proj.grid else "txt2img")
    cameras, (width, height), center = _cameras(scene, proj, objects)
    seed = settings.next_seed()
    base = settings.build_request(scene, seed)
    for key in ("mask", "outpaint"):
        base.pop(key, None)
    base.update(mode="txt2img", seamless="none", batch_size=1, width=width, height=height,
                preview={"decoder": "none"})  # views are shown projected, not as previews
    conditioning.add_units(base, specs)
    limits = _limits()
    max_side, max_pixels = int(limits.get("max_width", 4096)), int(limits.get("max_pixels", 4096 * 1024))
    if proj.grid:
        rows, cols = grid_layout(len(cameras))
        gw, gh = cols * width, rows * height
        if gw > max_side or gh > max_side or gw * gh > max_pixels:
            raise texture_project.ProjectTextureError(
                f"The grid of {len(cameras)} views is {gw}×{gh} pixels, more than the server takes: lower the View Size")
        words = "the same object seen from several sides" if proj.direction_words else ""
        requests = [{**base, "width": gw, "height": gh, "prompt": texture_views.view_prompt(base["prompt"], words)}]
    else:
        requests = []
        for i, camera in enumerate(cameras):
            direction = texture_views.direction_word(camera, center) if proj.direction_words else ""
            extra = proj.view_prompts[i].text if i < len(proj.view_prompts) else ""
            requests.append({**base, "seed": (seed + i) % 2**32, "prompt": texture_views.view_prompt(base["prompt"], direction, extra)})
    fill_w, fill_h = texture_views.fill_size(proj.texture_size, proj.texture_size, min(max_side, FILL_SIDE), min(max_pixels, FILL_SIDE ** 2))
    fill_request = {k: v for k, v in base.items() if k != "controls"}
    fill_request.update(mode="inpaint", strength=1.0, mask={"blur": 2, "invert": False}, width=fill_w, height=fill_h,
                        seed=(seed + len(cameras)) % 2**32)
    return texture_project.Plan(
        objects=[o.name for o in objects], cameras=cameras, view_size=(width, height), texture_size=proj.texture_size,
        requests=requests, fill_request=fill_request, specs=specs, supersample=proj.supersample, margin=proj.margin,
        fill=proj.fill, consistent=proj.consistent, grid=proj.grid, seam_blend=proj.seam_blend, strength=proj.strength,
    )


def _idle(context: bpy.types.Context) -> bool:
    scene = getattr(context, "scene", None)
    return scene is not None and hasattr(scene, "latentbridge") and not scene.latentbridge.running


class LATENTBRIDGE_OT_project_texture(bpy.types.Operator):
    """Texture the selected meshes from several generated views (depth/normal controlled), projected into their UV maps and baked seam-free"""

    bl_idname = "latentbridge.project_texture"
    bl_label = "Project Texture"
    bl_options = {"REGISTER"}  # the texture arrives later, with its own undo step

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not _idle(context):
            cls.poll_message_set("A job of this scene is running (Cancel it first)")
            return False
        if not _selected_meshes(context):
            cls.poll_message_set("Select the mesh objects to texture")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.latentbridge
        try:
            plan = build_plan(context)
            run = texture_project.start(context, plan)
        except (texture_project.ProjectTextureError, CaptureError, ConnectRefused, views.ProjectionError) as exc:
            self.report({"ERROR"}, str(exc))
            settings.error = str(exc)
            return {"CANCELLED"}
        settings.remember_prompt()
        what = "one grid of all views" if plan.grid else f"{len(plan.cameras)} view(s)"
        self.report({"INFO"}, f"Latent Bridge: projecting {what} onto {len(plan.objects)} object(s) "
                              f"(UV renders {run.render_s:.1f} s, seed {plan.requests[0]['seed']})")
        return {"FINISHED"}


class LATENTBRIDGE_OT_projection_camera_add(bpy.types.Operator):
    """Add the selected cameras to the projection's cameras (an empty slot when none is selected)"""

    bl_idname = "latentbridge.projection_camera_add"
    bl_label = "Add Cameras"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return getattr(context, "scene", None) is not None and hasattr(context.scene, "latentbridge_projection")

    def execute(self, context: bpy.types.Context) -> set[str]:
        proj = context.scene.latentbridge_projection
        have = {item.camera for item in proj.cameras}
        picked = [o for o in context.scene.objects if o.select_get() and o.type == "CAMERA" and o not in have]
        for camera in picked or [None]:
            item = proj.cameras.add()
            item.camera = camera
        proj.camera_index = len(proj.cameras) - 1
        self.report({"INFO"}, f"{len(picked)} camera(s) added" if picked else "Empty camera slot added: pick a camera in it")
        return {"FINISHED"}


class LATENTBRIDGE_OT_projection_camera_remove(bpy.types.Operator):
    """Remove the selected camera from the projection's cameras"""

    bl_idname = "latentbridge.projection_camera_remove"
    bl_label = "Remove Camera"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        scene = getattr(context, "scene", None)
        return scene is not None and hasattr(scene, "latentbridge_projection") and len(scene.latentbridge_projection.cameras) > 0

    def execute(self, context: bpy.types.Context) -> set[str]:
        proj = context.scene.latentbridge_projection
        proj.cameras.remove(min(proj.camera_index, len(proj.cameras) - 1))
        proj.camera_index = max(0, min(proj.camera_index, len(proj.cameras) - 1))
        return {"FINISHED"}


class LATENTBRIDGE_OT_view_prompt_add(bpy.types.Operator):
    """Add words for the next view (view 1, 2, … in order)"""

    bl_idname = "latentbridge.view_prompt_add"
    bl_label = "Add View Prompt"
    bl_options = {"REGISTER", "UNDO"}

    text: StringProperty(name="Words", default="", options={"SKIP_SAVE"}, description="Words added to that view's prompt")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        scene = getattr(context, "scene", None)
        return scene is not None and hasattr(scene, "latentbridge_projection") and len(scene.latentbridge_projection.view_prompts) < 16

    def execute(self, context: bpy.types.Context) -> set[str]:
        proj = context.scene.latentbridge_projection
        proj.view_prompts.add().text = self.text
        proj.view_prompt_index = len(proj.view_prompts) - 1
        return {"FINISHED"}


class LATENTBRIDGE_OT_view_prompt_remove(bpy.types.Operator):
    """Remove the selected view prompt (the later views move up)"""

    bl_idname = "latentbridge.view_prompt_remove"
    bl_label = "Remove View Prompt"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        scene = getattr(context, "scene", None)
        return scene is not None and hasattr(scene, "latentbridge_projection") and len(scene.latentbridge_projection.view_prompts) > 0

    def execute(self, context: bpy.types.Context) -> set[str]:
        proj = context.scene.latentbridge_projection
        proj.view_prompts.remove(min(proj.view_prompt_index, len(proj.view_prompts) - 1))
        proj.view_prompt_index = max(0, min(proj.view_prompt_index, len(proj.view_prompts) - 1))
        return {"FINISHED"}


class LATENTBRIDGE_UL_projection_cameras(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):  # noqa: D102
        layout.prop(item, "camera", text=f"{index + 1}", icon="CAMERA_DATA")


class LATENTBRIDGE_UL_view_prompts(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):  # noqa: D102
        layout.prop(item, "text", text=f"View {index + 1}", emboss=False)


def _list(layout: bpy.types.UILayout, list_id: str, proj: Any, prop: str, index: str, add: str, remove: str) -> None:
    row = layout.row()
    row.template_list(list_id, "", proj, prop, proj, index, rows=2)
    col = row.column(align=True)
    col.operator(add, text="", icon="ADD")
    col.operator(remove, text="", icon="REMOVE")


def draw_panel(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    scene = context.scene
    proj = scene.latentbridge_projection
    col = layout.column()
    col.prop(proj, "views")
    if proj.views == "ORBIT":
        row = col.row(align=True)
        row.prop(proj, "view_count")
        row.prop(proj, "elevation")
        row = col.row(align=True)
        row.prop(proj, "azimuth")
        row.prop(proj, "lens")
        row = col.row(align=True)
        row.prop(proj, "top", toggle=True)
        row.prop(proj, "bottom", toggle=True)
    elif proj.views == "CAMERAS":
        _list(col, "LATENTBRIDGE_UL_projection_cameras", proj, "cameras", "camera_index",
              "latentbridge.projection_camera_add", "latentbridge.projection_camera_remove")
    row = col.row(align=True)
    row.prop(proj, "view_size")
    row.prop(proj, "supersample")
    col.separator()
    col.label(text="Per-view controls (from the UV render)")
    draw_controls(col, proj.controls, CONTROL_KINDS)
    col.prop(proj, "direction_words")
    col.label(text="Per-view prompts (added to the main prompt)")
    _list(col, "LATENTBRIDGE_UL_view_prompts", proj, "view_prompts", "view_prompt_index",
          "latentbridge.view_prompt_add", "latentbridge.view_prompt_remove")
    col.separator()
    col.prop(proj, "grid")
    sub = col.column()
    sub.active = not proj.grid
    sub.prop(proj, "consistent")
    sub2 = sub.row(align=True)
    sub2.active = proj.consistent and not proj.grid
    sub2.prop(proj, "seam_blend")
    sub2.prop(proj, "strength", slider=True)
    col.separator()
    row = col.row(align=True)
    row.prop(proj, "texture_size")
    row.prop(proj, "margin")
    col.prop(proj, "fill")
    col.prop(proj, "smart_uv")
    row = col.row(align=True)
    row.scale_y = 1.5
    row.operator("latentbridge.project_texture", icon=ICONS["project"])
    if texture_project.running(scene.name) is not None:
        row.operator("latentbridge.cancel", text="", icon=ICONS["cancel"])


classes = (
    LATENTBRIDGE_PG_projection_camera, LATENTBRIDGE_PG_view_prompt, LATENTBRIDGE_PG_projection,
    LATENTBRIDGE_OT_project_texture, LATENTBRIDGE_OT_projection_camera_add, LATENTBRIDGE_OT_projection_camera_remove,
    LATENTBRIDGE_OT_view_prompt_add, LATENTBRIDGE_OT_view_prompt_remove,
    LATENTBRIDGE_UL_projection_cameras, LATENTBRIDGE_UL_view_prompts,
)


def register() -> None:
    bpy.types.Scene.latentbridge_projection = PointerProperty(
        type=LATENTBRIDGE_PG_projection, name="Latent Bridge Projection",
        description="Settings of Project Texture (multi-view texturing)")


def unregister() -> None:
    del bpy.types.Scene.latentbridge_projection
