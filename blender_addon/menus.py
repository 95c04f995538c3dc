"""Menu entries where artists look (Image Editor › Image, 3D Viewport › Object, Render), Blender
presets of the prompt and settings, and the prompt history menu."""

from __future__ import annotations

import bpy
from bl_operators.presets import AddPresetBase

from .feedback import ICONS

PRESET_SUBDIR = "latentbridge"
# What a preset stores: the request's settings, not the per-file state (images, history, jobs).
PRESET_VALUES = [
    f"settings.{name}"
    for name in (
        "prompt", "negative_prompt", "mode", "source", "strength", "steps", "guidance", "sampler", "size_mode",
        "width", "height", "seamless", "mask_source", "mask_blur", "mask_invert", "preview_size", "batch_size",
        "random_seed", "seed",
    )
]


class LATENTBRIDGE_MT_presets(bpy.types.Menu):
    """Saved prompts and settings"""

    bl_label = "Latent Bridge Presets"
    preset_subdir = PRESET_SUBDIR
    preset_operator = "script.execute_preset"
    draw = bpy.types.Menu.draw_preset


class LATENTBRIDGE_OT_preset_add(AddPresetBase, bpy.types.Operator):
    """Save the prompt and settings as a preset (or remove the chosen one)"""

    bl_idname = "latentbridge.preset_add"
    bl_label = "Add Latent Bridge Preset"
    preset_menu = "LATENTBRIDGE_MT_presets"
    preset_defines = ["settings = bpy.context.scene.latentbridge"]
    preset_values = PRESET_VALUES
    preset_subdir = PRESET_SUBDIR


class LATENTBRIDGE_MT_history(bpy.types.Menu):
    """Prompts used in this file: pick one to put it back"""

    bl_label = "Prompt History"

    def draw(self, context: bpy.types.Context) -> None:
        history = context.scene.latentbridge.history
        if not history:
            self.layout.label(text="No prompts used in this file yet")
        for i, item in enumerate(history):
            label = item.prompt if len(item.prompt) <= 60 else item.prompt[:57] + "…"
            self.layout.operator("latentbridge.recall_prompt", text=label).index = i


def draw_image_menu(self, context: bpy.types.Context) -> None:
    layout = self.layout
    layout.separator()
    layout.operator("latentbridge.generate", text="Latent Bridge: Generate", icon=ICONS["generate"])
    image = getattr(context.space_data, "image", None)
    if image is not None and image.get("latentbridge_request"):
        layout.operator("latentbridge.regenerate", text="Latent Bridge: Regenerate", icon=ICONS["regenerate"]).image = image.name
        layout.operator("latentbridge.use_result", text="Latent Bridge: Use as Result", icon=ICONS["use_result"]).image = image.name


def draw_object_menu(self, context: bpy.types.Context) -> None:
    layout = self.layout
    layout.separator()
    layout.operator("latentbridge.generate_texture", text="Latent Bridge: Generate Texture", icon=ICONS["texture"])
    layout.operator("latentbridge.project_texture", text="Latent Bridge: Project Texture", icon=ICONS["project"])


def draw_render_menu(self, context: bpy.types.Context) -> None:
    layout = self.layout
    layout.separator()
    layout.operator("latentbridge.generate", text="Latent Bridge: Image to Image", icon=ICONS["generate"]).mode = "img2img"
    layout.operator("latentbridge.animate", text="Latent Bridge: Generate Animation", icon=ICONS["animate"])
    layout.operator("latentbridge.animate", text="Latent Bridge: Resume Animation", icon=ICONS["resume"]).resume = True


MENU_ENTRIES = (("IMAGE_MT_image", draw_image_menu), ("VIEW3D_MT_object", draw_object_menu), ("TOPBAR_MT_render", draw_render_menu))

classes = (LATENTBRIDGE_MT_presets, LATENTBRIDGE_OT_preset_add, LATENTBRIDGE_MT_history)


def register() -> None:
    for menu, draw in MENU_ENTRIES:
        getattr(bpy.types, menu).append(draw)


def unregister() -> None:
    for menu, draw in MENU_ENTRIES:
        getattr(bpy.types, menu).remove(draw)
