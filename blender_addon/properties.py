"""Scene settings (`scene.latentbridge`) and the request they describe."""

from __future__ import annotations

import random
from typing import Any

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

MAX_SEED = 2**32 - 1

MODES = [
    ("txt2img", "Text to Image", "Generate an image from the prompt"),
    ("img2img", "Image to Image", "Restyle the source image (render, viewport or an image)"),
    ("inpaint", "Inpaint", "Repaint the masked part of the source image"),
    ("outpaint", "Outpaint", "Extend the source image past its borders"),
    ("texture", "Texture", "A seamless texture wired into the selected objects' material"),
]
SOURCES = [
    ("RENDER", "Render", "Render the scene with its own engine"),
    ("VIEWPORT", "Viewport", "The 3D viewport as seen (a Workbench camera render where there is no GPU context)"),
    ("IMAGE", "Image", "An existing image"),
]
MASK_SOURCES = [
    ("OBJECTS", "Selected Objects", "Repaint where the selected objects are seen from the camera"),
    ("IMAGE", "Mask Image", "A painted mask image: white = repaint"),
    ("ALPHA", "Image Alpha", "Repaint where the source image is transparent (erased)"),
]
SAMPLERS = [
    (s, label, "")
    for s, label in (
        ("euler_a", "Euler a"),
        ("euler", "Euler"),
        ("dpmpp_2m", "DPM++ 2M"),
        ("dpmpp_2m_karras", "DPM++ 2M Karras"),
        ("dpmpp_sde_karras", "DPM++ SDE Karras"),
        ("ddim", "DDIM"),
        ("unipc", "UniPC"),
        ("lcm", "LCM"),
        ("heun", "Heun"),
        ("pndm", "PNDM"),
    )
]
SEAMLESS = [
    ("none", "Off", "Not tileable"),
    ("x", "X", "Tiles horizontally"),
    ("y", "Y", "Tiles vertically"),
    ("xy", "X and Y", "Tiles in both directions"),
]
SIZE_MODES = [
    ("RENDER", "Render Resolution", "The scene's render resolution (with its percentage)"),
    ("CUSTOM", "Custom", "Width and height below"),
]

# Models listed by the server; filled by the controller from the models list it fetched.
SERVER_DEFAULT = "__server_default__"
_DEFAULT_ITEM = (SERVER_DEFAULT, "Server Default", "The model the server has loaded")
_model_items: list[tuple[str, str, str]] = [_DEFAULT_ITEM]


def set_model_names(names: list[str]) -> None:
    _model_items[:] = [_DEFAULT_ITEM] + [(n, n, "") for n in names if n != SERVER_DEFAULT]


def _models(self: Any, context: Any) -> list[tuple[str, str, str]]:
    return list(_model_items)


def _round8(value: int) -> int:
    return max(64, (int(value) // 8) * 8)


class LATENTBRIDGE_PG_lora(bpy.types.PropertyGroup):
    name: StringProperty(name="LoRA", description="LoRA file name on the server")
    weight: FloatProperty(name="Weight", default=1.0, min=-4.0, max=4.0, soft_min=-2.0, soft_max=2.0)
    enabled: BoolProperty(name="Enabled", default=True)


class LATENTBRIDGE_PG_settings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to generate")
    negative_prompt: StringProperty(name="Negative", description="What to avoid")
    mode: EnumProperty(name="Mode", items=MODES, default="txt2img")
    source: EnumProperty(name="Source", items=SOURCES, default="RENDER")
    source_image: PointerProperty(name="Source Image", type=bpy.types.Image)
    mask_source: EnumProperty(name="Mask", items=MASK_SOURCES, default="OBJECTS")
    mask_image: PointerProperty(name="Mask Image", type=bpy.types.Image)
    mask_blur: IntProperty(name="Mask Blur", default=4, min=0, max=256)
    mask_invert: BoolProperty(name="Invert Mask", default=False)
    strength: FloatProperty(name="Strength", default=0.75, min=0.0, max=1.0, description="How much the source changes")
    steps: IntProperty(name="Steps", default=20, min=1, max=150)
    guidance: FloatProperty(name="Guidance", default=7.0, min=0.0, max=30.0)
    seed: IntProperty(name="Seed", default=0, min=0, description="Seed of the next generation")
    random_seed: BoolProperty(name="Random Seed", default=True, description="Pick a new seed each time")
    sampler: EnumProperty(name="Sampler", items=SAMPLERS, default="euler_a")
    size_mode: EnumProperty(name="Size", items=SIZE_MODES, default="RENDER")
    width: IntProperty(name="Width", default=512, min=64, max=4096, step=8)
    height: IntProperty(name="Height", default=512, min=64, max=4096, step=8)
    seamless: EnumProperty(name="Seamless", items=SEAMLESS, default="none")
    texture_seamless: EnumProperty(name="Tiling", items=SEAMLESS, default="xy")
    outpaint_left: IntProperty(name="Left", default=0, min=0, max=2048)
    outpaint_right: IntProperty(name="Right", default=0, min=0, max=2048)
    outpaint_top: IntProperty(name="Top", default=0, min=0, max=2048)
    outpaint_bottom: IntProperty(name="Bottom", default=0, min=0, max=2048)
    model: EnumProperty(name="Model", items=_models, description="Models the server offers")
    loras: CollectionProperty(type=LATENTBRIDGE_PG_lora)
    lora_index: IntProperty(default=0)
    preview_size: IntProperty(name="Preview Size", default=256, min=16, max=1024, description="Longest side of live previews")
    # Progress of the running job, written by the controller (shown, never edited).
    status: StringProperty(name="Status", default="")
    error: StringProperty(name="Error", default="")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    step: IntProperty(default=0)
    total: IntProperty(default=0)
    eta: FloatProperty(default=-1.0)
    running: BoolProperty(default=False)
    last_seed: IntProperty(name="Last Seed", default=-1, min=-1)
    last_result: StringProperty(name="Last Result", default="")

    def request_size(self, scene: bpy.types.Scene) -> tuple[int, int]:
        if self.size_mode == "RENDER":
            pct = scene.render.resolution_percentage / 100.0
            return _round8(scene.render.resolution_x * pct), _round8(scene.render.resolution_y * pct)
        return _round8(self.width), _round8(self.height)

    def next_seed(self) -> int:
        if self.random_seed:
            self.seed = random.randint(0, 2**31 - 1)  # IntProperty is a signed 32-bit int
        return int(self.seed)

    def build_request(self, scene: bpy.types.Scene, seed: int) -> dict[str, Any]:
        """The wire `GenerationRequest` these settings describe (texture = seamless txt2img)."""
        width, height = self.request_size(scene)
        texture = self.mode == "texture"
        request: dict[str, Any] = {
            "mode": "txt2img" if texture else self.mode,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": seed,
            "steps": self.steps,
            "guidance": round(self.guidance, 4),
            "strength": round(self.strength, 4),
            "width": width,
            "height": height,
            "sampler": self.sampler,
            "seamless": self.texture_seamless if texture else self.seamless,
            "preview": {"decoder": "latent2rgb", "max_size": self.preview_size},
        }
        if self.mode == "inpaint":
            request["mask"] = {"blur": self.mask_blur, "invert": self.mask_invert}
        if self.mode == "outpaint":
            request["outpaint"] = {
                "left": self.outpaint_left,
                "top": self.outpaint_top,
                "right": self.outpaint_right,
                "bottom": self.outpaint_bottom,
            }
        if self.model and self.model != SERVER_DEFAULT:
            request["model"] = self.model
        loras = [{"name": lo.name, "weight": round(lo.weight, 4)} for lo in self.loras if lo.enabled and lo.name]
        if loras:
            request["loras"] = loras
        return request


classes = (LATENTBRIDGE_PG_lora, LATENTBRIDGE_PG_settings)


def register() -> None:
    bpy.types.Scene.latentbridge = PointerProperty(type=LATENTBRIDGE_PG_settings)


def unregister() -> None:
    del bpy.types.Scene.latentbridge
