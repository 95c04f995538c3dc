"""Sidebar panels in the 3D Viewport and the Image Editor (same content in both): the request,
Scene Controls (control_ui.py), Batch, Animation, Sampling and Server."""

from __future__ import annotations

import bpy

from . import animation, apply, control_ui, feedback, texture_ui
from .controller import controller
from .feedback import ICONS


class LATENTBRIDGE_UL_loras(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):  # noqa: D102
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        row.prop(item, "name", text="", emboss=False)
        row.prop(item, "weight", text="")


def _draw_presets(layout: bpy.types.UILayout) -> None:
    row = layout.row(align=True)
    row.menu("LATENTBRIDGE_MT_presets", text=bpy.types.LATENTBRIDGE_MT_presets.bl_label, icon=ICONS["presets"])
    row.operator("latentbridge.preset_add", text="", icon="ADD")
    row.operator("latentbridge.preset_add", text="", icon="REMOVE").remove_active = True
    row.menu("LATENTBRIDGE_MT_history", text="", icon=ICONS["history"])


def _draw_source(col: bpy.types.UILayout, settings) -> None:
    box = col.box()
    box.prop(settings, "source")
    if settings.source == "IMAGE":
        box.template_ID(settings, "source_image", open="image.open")
    elif settings.source == "RENDER":
        box.prop(settings, "reuse_render")
    if settings.mode != "outpaint":
        box.prop(settings, "strength", slider=True)
    if settings.mode == "inpaint":
        box.prop(settings, "mask_source")
        if settings.mask_source == "IMAGE":
            box.template_ID(settings, "mask_image", new="image.new", open="image.open")
        row = box.row(align=True)
        row.prop(settings, "mask_blur")
        row.prop(settings, "mask_invert", text="Invert")
    if settings.mode == "outpaint":
        grid = box.grid_flow(columns=2, align=True)
        for side in ("left", "right", "top", "bottom"):
            grid.prop(settings, f"outpaint_{side}")


def _draw_status(col: bpy.types.UILayout, context: bpy.types.Context, settings) -> None:
    busy = settings.running
    if busy or settings.status:
        text = feedback.progress_text(settings)
        if hasattr(col, "progress"):
            col.progress(factor=settings.progress, type="BAR", text=text)
        else:
            col.label(text=text)
    if busy and controller.connection is not None and controller.conn_state != "CONNECTED":
        feedback.draw_connection(col.box(), context)
    if settings.error:
        box = col.box()
        lines = feedback.wrap(settings.error, context.region.width if context.region else 300)
        for i, line in enumerate(lines[:6]):
            box.label(text=line, icon=ICONS["error"] if i == 0 else "BLANK1")
        row = box.row(align=True)
        if len(lines) > 6:
            row.operator("latentbridge.show_error", text="Show All", icon="TEXT")
        row.operator("latentbridge.clear_error", text="Dismiss", icon="X")


def _draw_generate(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    settings = context.scene.latentbridge
    _draw_presets(layout)
    col = layout.column()
    col.prop(settings, "mode")
    col.prop(settings, "prompt", text="", placeholder="Prompt") if bpy.app.version >= (4, 1, 0) else col.prop(settings, "prompt")
    col.prop(settings, "negative_prompt", text="Negative")
    if settings.mode in ("img2img", "inpaint", "outpaint"):
        _draw_source(col, settings)
    col.prop(settings, "size_mode")
    if settings.size_mode == "CUSTOM":
        row = col.row(align=True)
        row.prop(settings, "width")
        row.prop(settings, "height")
    col.prop(settings, "seamless")

    row = col.row(align=True)
    row.prop(settings, "seed")
    row.prop(settings, "random_seed", text="", icon=ICONS["random_toggle"])
    row.operator("latentbridge.random_seed", text="", icon=ICONS["random_seed"])
    row.operator("latentbridge.reuse_seed", text="", icon=ICONS["reuse_seed"])

    col.separator()
    row = col.row(align=True)
    row.scale_y = 1.5
    if settings.mode == "texture":
        row.operator("latentbridge.generate_texture", icon=ICONS["texture"])
    else:
        row.operator("latentbridge.generate", icon=ICONS["generate"])
    if settings.running:
        row.operator("latentbridge.cancel", text="", icon=ICONS["cancel"])
    _draw_status(col, context, settings)
    if settings.last_result and settings.last_result in bpy.data.images:
        row = col.row(align=True)
        row.label(text=f"{settings.last_result}", icon="IMAGE_DATA")
        row.operator("latentbridge.regenerate", text="", icon=ICONS["regenerate"]).image = settings.last_result


def _draw_batch(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    settings = context.scene.latentbridge
    col = layout.column()
    col.prop(settings, "batch_size")
    for item in settings.batch:
        image = bpy.data.images.get(item.image)
        if image is None:
            continue
        row = col.row(align=True)
        current = item.image == settings.last_result
        row.label(text=f"Seed {image.get('latentbridge_seed')}", icon="CHECKBOX_HLT" if current else "CHECKBOX_DEHLT")
        row.operator("latentbridge.use_result", text="Use", icon=ICONS["use_result"]).image = item.image
        row.operator("latentbridge.regenerate", text="", icon=ICONS["regenerate"]).image = item.image


def _draw_animation(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    scene = context.scene
    settings = scene.latentbridge
    col = layout.column()
    col.prop(settings, "anim_use_scene_range")
    row = col.row(align=True)
    if settings.anim_use_scene_range:
        row.enabled = False
        row.prop(scene, "frame_start", text="Start")
        row.prop(scene, "frame_end", text="End")
    else:
        row.prop(settings, "anim_start")
        row.prop(settings, "anim_end")
    col.prop(settings, "anim_folder")
    col.prop(settings, "strength", slider=True)
    col.prop(settings, "anim_feed_previous")
    sub = col.row()
    sub.active = settings.anim_feed_previous
    sub.prop(settings, "anim_feed_weight", slider=True)
    col.prop(settings, "anim_pack")
    row = col.row(align=True)
    row.operator("latentbridge.animate", icon=ICONS["animate"])
    row.operator("latentbridge.animate", text="Resume", icon=ICONS["resume"]).resume = True
    if animation.running(scene.name) is not None:
        row.operator("latentbridge.cancel", text="", icon=ICONS["cancel"])


def _draw_advanced(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    settings = context.scene.latentbridge
    col = layout.column()
    col.prop(settings, "steps")
    col.prop(settings, "guidance")
    col.prop(settings, "sampler")
    row = col.row(align=True)
    row.prop(settings, "model")
    row.operator("latentbridge.refresh_models", text="", icon=ICONS["refresh"])
    col.prop(settings, "preview_size")
    col.label(text="LoRAs" + (f" ({len(controller.loras)} on the server)" if controller.loras else ""))
    if controller.loras_note:
        for line in feedback.wrap(controller.loras_note, context.region.width if context.region else 300):
            col.label(text=line, icon="INFO")
    row = col.row()
    row.template_list("LATENTBRIDGE_UL_loras", "", settings, "loras", settings, "lora_index", rows=2)
    sub = row.column(align=True)
    sub.operator("latentbridge.lora_add", text="", icon=ICONS["lora_add"])
    sub.operator("latentbridge.lora_remove", text="", icon=ICONS["lora_remove"])


def _draw_connection(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    feedback.draw_connection(layout, context)
    row = layout.row(align=True)
    row.operator("latentbridge.connect", icon=ICONS["connect"])
    row.operator("latentbridge.disconnect", icon=ICONS["disconnect"])


class _Sidebar:
    bl_region_type = "UI"
    bl_category = "Latent Bridge"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None and hasattr(context.scene, "latentbridge")


def _subpanel(label: str, draw, space: str, parent: str, name: str) -> type:
    """One sub-panel of a sidebar panel (the same definition serves both editors)."""
    return type(name, (_Sidebar, bpy.types.Panel), {
        "bl_label": label, "bl_options": {"DEFAULT_CLOSED"}, "bl_space_type": space, "bl_parent_id": parent,
        "draw": lambda self, context: draw(self.layout, context),
    })


class LATENTBRIDGE_PT_view3d(_Sidebar, bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_label = "Latent Bridge"

    def draw(self, context):  # noqa: D102
        _draw_generate(self.layout, context)


class LATENTBRIDGE_PT_image(_Sidebar, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_label = "Latent Bridge"

    def draw(self, context):  # noqa: D102
        _draw_generate(self.layout, context)
        image = getattr(context.space_data, "image", None)
        if image is not None and apply.stored_request(image) is not None:
            box = self.layout.box()
            box.label(text=f"Seed {image.get('latentbridge_seed')}: {image.get('latentbridge_prompt', '')[:60]}")
            row = box.row(align=True)
            row.operator("latentbridge.regenerate", icon=ICONS["regenerate"]).image = image.name
            row.operator("latentbridge.use_result", icon=ICONS["use_result"]).image = image.name


SUBPANELS = (("controls", "Scene Controls", control_ui.draw_panel), ("projection", "Project Texture", texture_ui.draw_panel),
             ("batch", "Batch", _draw_batch), ("animation", "Animation", _draw_animation),
             ("advanced", "Sampling", _draw_advanced), ("connection", "Server", _draw_connection))

classes = (LATENTBRIDGE_UL_loras, LATENTBRIDGE_PT_view3d, LATENTBRIDGE_PT_image) + tuple(
    _subpanel(label, draw, space, parent, f"{parent}_{key}")
    for parent, space in (("LATENTBRIDGE_PT_view3d", "VIEW_3D"), ("LATENTBRIDGE_PT_image", "IMAGE_EDITOR"))
    for key, label, draw in SUBPANELS
)
