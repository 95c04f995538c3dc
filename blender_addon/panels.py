"""Sidebar panels in the 3D Viewport and the Image Editor (same content in both)."""

from __future__ import annotations

import bpy

from . import apply
from .controller import controller


class LATENTBRIDGE_UL_loras(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):  # noqa: D102
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        row.prop(item, "name", text="", emboss=False)
        row.prop(item, "weight", text="")


def _draw_generate(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    settings = context.scene.latentbridge
    col = layout.column()
    col.prop(settings, "mode")
    col.prop(settings, "prompt", text="", placeholder="Prompt") if bpy.app.version >= (4, 1, 0) else col.prop(settings, "prompt")
    col.prop(settings, "negative_prompt", text="Negative")
    if settings.mode in ("img2img", "inpaint", "outpaint"):
        box = col.box()
        box.prop(settings, "source")
        if settings.source == "IMAGE":
            box.template_ID(settings, "source_image", open="image.open")
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
    if settings.mode == "texture":
        col.prop(settings, "texture_seamless")
    col.prop(settings, "size_mode")
    if settings.size_mode == "CUSTOM":
        row = col.row(align=True)
        row.prop(settings, "width")
        row.prop(settings, "height")
    if settings.mode != "texture":
        col.prop(settings, "seamless")

    row = col.row(align=True)
    row.prop(settings, "seed")
    row.prop(settings, "random_seed", text="", icon="FILE_REFRESH")
    row.operator("latentbridge.random_seed", text="", icon="MOD_NOISE")
    row.operator("latentbridge.reuse_seed", text="", icon="RECOVER_LAST")

    col.separator()
    busy = settings.running
    row = col.row(align=True)
    row.scale_y = 1.5
    sub = row.row(align=True)
    sub.enabled = not busy
    if settings.mode == "texture":
        sub.operator("latentbridge.generate_texture", icon="TEXTURE")
    else:
        sub.operator("latentbridge.generate", icon="RENDER_STILL")
    if busy:
        row.operator("latentbridge.cancel", text="", icon="CANCEL")
    if busy or settings.status:
        text = settings.status
        if busy and settings.total:
            eta = f", ETA {settings.eta:.0f} s" if settings.eta >= 0 else ""
            text = f"Step {settings.step}/{settings.total}{eta}"
        if hasattr(col, "progress"):
            col.progress(factor=settings.progress, type="BAR", text=text)
        else:
            col.label(text=text)
    if settings.error:
        col.label(text=settings.error, icon="ERROR")
    if settings.last_result and settings.last_result in bpy.data.images:
        row = col.row(align=True)
        row.label(text=f"{settings.last_result}", icon="IMAGE_DATA")
        row.operator("latentbridge.regenerate", text="", icon="FILE_REFRESH").image = settings.last_result


def _draw_advanced(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    settings = context.scene.latentbridge
    col = layout.column()
    col.prop(settings, "steps")
    col.prop(settings, "guidance")
    col.prop(settings, "sampler")
    row = col.row(align=True)
    row.prop(settings, "model")
    row.operator("latentbridge.refresh_models", text="", icon="FILE_REFRESH")
    col.prop(settings, "preview_size")
    col.label(text="LoRAs")
    row = col.row()
    row.template_list("LATENTBRIDGE_UL_loras", "", settings, "loras", settings, "lora_index", rows=2)
    sub = row.column(align=True)
    sub.operator("latentbridge.lora_add", text="", icon="ADD")
    sub.operator("latentbridge.lora_remove", text="", icon="REMOVE")


def _draw_connection(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    col = layout.column()
    col.label(text=controller.conn_status, icon="CHECKMARK" if controller.conn_state == "CONNECTED" else "INFO")
    row = col.row(align=True)
    row.operator("latentbridge.connect", icon="LINKED")
    row.operator("latentbridge.disconnect", icon="UNLINKED")


class _Sidebar:
    bl_region_type = "UI"
    bl_category = "Latent Bridge"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None and hasattr(context.scene, "latentbridge")


class LATENTBRIDGE_PT_view3d(_Sidebar, bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_label = "Latent Bridge"

    def draw(self, context):  # noqa: D102
        _draw_generate(self.layout, context)


class _SamplingPanel(_Sidebar):
    bl_label = "Sampling"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):  # noqa: D102
        _draw_advanced(self.layout, context)


class _ServerPanel(_Sidebar):
    bl_label = "Server"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):  # noqa: D102
        _draw_connection(self.layout, context)


class LATENTBRIDGE_PT_view3d_advanced(_SamplingPanel, bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_parent_id = "LATENTBRIDGE_PT_view3d"


class LATENTBRIDGE_PT_view3d_connection(_ServerPanel, bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_parent_id = "LATENTBRIDGE_PT_view3d"


class LATENTBRIDGE_PT_image(_Sidebar, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_label = "Latent Bridge"

    def draw(self, context):  # noqa: D102
        _draw_generate(self.layout, context)
        image = getattr(context.space_data, "image", None)
        if image is not None and apply.stored_request(image) is not None:
            box = self.layout.box()
            box.label(text=f"Seed {image.get('latentbridge_seed')}: {image.get('latentbridge_prompt', '')[:60]}")
            box.operator("latentbridge.regenerate", icon="FILE_REFRESH").image = image.name


class LATENTBRIDGE_PT_image_advanced(_SamplingPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_parent_id = "LATENTBRIDGE_PT_image"


class LATENTBRIDGE_PT_image_connection(_ServerPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_parent_id = "LATENTBRIDGE_PT_image"


classes = (
    LATENTBRIDGE_UL_loras,
    LATENTBRIDGE_PT_view3d,
    LATENTBRIDGE_PT_view3d_advanced,
    LATENTBRIDGE_PT_view3d_connection,
    LATENTBRIDGE_PT_image,
    LATENTBRIDGE_PT_image_advanced,
    LATENTBRIDGE_PT_image_connection,
)
