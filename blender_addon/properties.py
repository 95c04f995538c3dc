"""Scene settings (`scene.latentbridge`) and the request they describe."""

from __future__ import annotations

import json
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
HISTORY_LENGTH = 20

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
    ("IMAGE", "Image", "An existing image (the Render Result too)"),
]
MASK_SOURCES = [
    ("OBJECTS", "Selected Objects", "Repaint where the selected objects are seen from the camera"),
    ("IMAGE", "Mask Image", "A painted mask image: white = repaint"),
    ("ALPHA", "Image Alpha", "Repaint where the source image is transparent (erased)"),
]
SAMPLERS = [
    (s, label, tip)
    for s, label, tip in (
        ("euler_a", "Euler a", "Euler ancestral: fast, varied, good default"),
        ("euler", "Euler", "Euler: fast, converges"),
        ("dpmpp_2m", "DPM++ 2M", "DPM++ 2M: sharp in few steps"),
        ("dpmpp_2m_karras", "DPM++ 2M Karras", "DPM++ 2M with Karras sigmas: sharp in few steps"),
        ("dpmpp_sde_karras", "DPM++ SDE Karras", "DPM++ SDE with Karras sigmas: detailed, slower per step"),
        ("ddim", "DDIM", "DDIM: deterministic, classic"),
        ("unipc", "UniPC", "UniPC: good results in very few steps"),
        ("lcm", "LCM", "LCM: for LCM models and LoRAs (2-8 steps, low guidance)"),
        ("heun", "Heun", "Heun: accurate, two model calls per step"),
        ("pndm", "PNDM", "PNDM: the original Stable Diffusion sampler"),
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

# Models and LoRAs listed by the server; filled by the controller from the lists it fetched.
SERVER_DEFAULT = "__server_default__"
_DEFAULT_ITEM = (SERVER_DEFAULT, "Server Default", "The model the server has loaded")
_model_items: list[tuple[str, str, str]] = [_DEFAULT_ITEM]
_lora_names: list[str] = []


def set_model_names(names: list[str]) -> None:
    _model_items[:] = [_DEFAULT_ITEM] + [(n, n, f"Model {n} on the server") for n in names if n != SERVER_DEFAULT]


def set_lora_names(names: list[str]) -> None:
    _lora_names[:] = list(names)


def _models(self: Any, context: Any) -> list[tuple[str, str, str]]:
    return list(_model_items)


def _lora_search(self: Any, context: Any, text: str) -> list[str]:
    """The server's LoRAs matching what was typed (any name can still be typed)."""
    return [n for n in _lora_names if text.lower() in n.lower()]


def _round8(value: int) -> int:
    return max(64, (int(value) // 8) * 8)


def _mode_changed(self: "LATENTBRIDGE_PG_settings", context: Any) -> None:
    if self.mode == "texture" and self.seamless == "none":
        self.seamless = "xy"  # a texture is tileable unless the artist says otherwise


class LATENTBRIDGE_PG_lora(bpy.types.PropertyGroup):
    name: StringProperty(name="LoRA", description="LoRA file name on the server (pick from the server's list or type it)",
                       search=_lora_search)
    weight: FloatProperty(name="Weight", default=1.0, min=-4.0, max=4.0, soft_min=-2.0, soft_max=2.0,
                          description="How strongly the LoRA applies (1 = as trained, negative = the opposite)")
    enabled: BoolProperty(name="Enabled", default=True, description="Use this LoRA in the next generation")


class LATENTBRIDGE_PG_prompt(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="A prompt used in this file")
    negative_prompt: StringProperty(name="Negative", description="Its negative prompt")


class LATENTBRIDGE_PG_batch_image(bpy.types.PropertyGroup):
    image: StringProperty(name="Image", description="An image of the last batch")


class LATENTBRIDGE_PG_settings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to generate")
    negative_prompt: StringProperty(name="Negative", description="What to avoid")
    mode: EnumProperty(name="Mode", items=MODES, default="txt2img", update=_mode_changed, description="What to generate")
    source: EnumProperty(name="Source", items=SOURCES, default="RENDER", description="The image to start from")
    source_image: PointerProperty(name="Source Image", type=bpy.types.Image, description="The image to start from (Source: Image)")
    reuse_render: BoolProperty(name="Reuse Last Render", default=False,
                               description="Use the last render again when the scene has not changed since (no new render)")
    mask_source: EnumProperty(name="Mask", items=MASK_SOURCES, default="OBJECTS", description="Where the area to repaint comes from")
    mask_image: PointerProperty(name="Mask Image", type=bpy.types.Image, description="A painted mask: white = repaint")
    mask_blur: IntProperty(name="Mask Blur", default=4, min=0, max=256, description="Feathers the mask's edge by this many pixels")
    mask_invert: BoolProperty(name="Invert Mask", default=False, description="Repaint the unmasked area instead")
    strength: FloatProperty(name="Strength", default=0.75, min=0.0, max=1.0,
                            description="How much the source changes (0 = kept, 1 = replaced)")
    steps: IntProperty(name="Steps", default=20, min=1, max=150, description="Denoising steps: more is slower and usually finer")
    guidance: FloatProperty(name="Guidance", default=7.0, min=0.0, max=30.0,
                            description="How closely to follow the prompt (CFG scale; 5-9 is typical)")
    seed: IntProperty(name="Seed", default=0, min=0, description="Seed of the next generation: the same seed gives the same image")
    random_seed: BoolProperty(name="Random Seed", default=True, description="Pick a new seed each time")
    sampler: EnumProperty(name="Sampler", items=SAMPLERS, default="euler_a", description="The denoising method")
    size_mode: EnumProperty(name="Size", items=SIZE_MODES, default="RENDER", description="Size of the generated image")
    width: IntProperty(name="Width", default=512, min=64, max=4096, step=8, description="Width in pixels (a multiple of 8)")
    height: IntProperty(name="Height", default=512, min=64, max=4096, step=8, description="Height in pixels (a multiple of 8)")
    seamless: EnumProperty(name="Seamless", items=SEAMLESS, default="none", description="Make the image tile along X, Y or both")
    outpaint_left: IntProperty(name="Left", default=0, min=0, max=2048, description="Pixels to add on the left")
    outpaint_right: IntProperty(name="Right", default=0, min=0, max=2048, description="Pixels to add on the right")
    outpaint_top: IntProperty(name="Top", default=0, min=0, max=2048, description="Pixels to add at the top")
    outpaint_bottom: IntProperty(name="Bottom", default=0, min=0, max=2048, description="Pixels to add at the bottom")
    model: EnumProperty(name="Model", items=_models, description="Models the server offers (Refresh to list them)")
    loras: CollectionProperty(type=LATENTBRIDGE_PG_lora, description="LoRAs applied to the model")
    lora_index: IntProperty(default=0, description="The selected LoRA")
    preview_size: IntProperty(name="Preview Size", default=256, min=16, max=1024, description="Longest side of live previews")
    batch_size: IntProperty(name="Batch", default=1, min=1, max=8,
                            description="Images per Generate, with consecutive seeds; pick one as the result")
    batch: CollectionProperty(type=LATENTBRIDGE_PG_batch_image, description="The images of the last batch")
    history: CollectionProperty(type=LATENTBRIDGE_PG_prompt, description="Prompts used in this file, newest first")
    # Animation (see animation.py)
    anim_use_scene_range: BoolProperty(name="Scene Range", default=True, description="Use the scene's frame range")
    anim_start: IntProperty(name="Start", default=1, min=0, description="First frame to generate")
    anim_end: IntProperty(name="End", default=24, min=0, description="Last frame to generate")
    anim_feed_previous: BoolProperty(name="Feed Previous Frame", default=False,
                                     description="Blend the previous frame's result into each render before img2img (steadier animation)")
    anim_feed_weight: FloatProperty(name="Previous Frame Weight", default=0.5, min=0.0, max=1.0, subtype="FACTOR",
                                    description="How much of the previous result goes into the next frame's source")
    anim_pack: BoolProperty(name="Pack Frames", default=False, description="Also pack every frame into the .blend")
    anim_folder: StringProperty(name="Folder", default="//latentbridge_frames/", subtype="DIR_PATH",
                                description="Where the image sequence is written (// = next to the .blend)")
    # Progress of the running job, written by the controller (shown, never edited).
    status: StringProperty(name="Status", default="", description="What the add-on is doing")
    error: StringProperty(name="Error", default="", description="The last error, in full")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR", description="Progress of the running job")
    step: IntProperty(default=0, description="Step of the running job")
    total: IntProperty(default=0, description="Steps of the running job")
    eta: FloatProperty(default=-1.0, description="Seconds left (estimate)")
    running: BoolProperty(default=False, description="A job of this scene is running")
    jobs_json: StringProperty(default="", description="Running jobs, so a file saved mid-job re-attaches when reopened")
    last_seed: IntProperty(name="Last Seed", default=-1, min=-1, description="Seed of the last result")
    last_result: StringProperty(name="Last Result", default="", description="The last result image")

    def request_size(self, scene: bpy.types.Scene) -> tuple[int, int]:
        if self.size_mode == "RENDER":
            pct = scene.render.resolution_percentage / 100.0
            return _round8(scene.render.resolution_x * pct), _round8(scene.render.resolution_y * pct)
        return _round8(self.width), _round8(self.height)

    def next_seed(self) -> int:
        if self.random_seed:
            self.seed = random.randint(0, 2**31 - 1)  # IntProperty is a signed 32-bit int
        return int(self.seed)

    def store_jobs(self, records: list[dict[str, Any]]) -> None:
        text = json.dumps(records, sort_keys=True) if records else ""
        if self.jobs_json != text:
            self.jobs_json = text

    def stored_jobs(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.jobs_json) if self.jobs_json else []
        except ValueError:
            return []
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    def remember_prompt(self) -> None:
        """Put the current prompt at the top of this file's history (no duplicates)."""
        if not self.prompt.strip():
            return
        for i, item in enumerate(self.history):
            if item.prompt == self.prompt and item.negative_prompt == self.negative_prompt:
                self.history.remove(i)
                break
        item = self.history.add()
        item.prompt, item.negative_prompt = self.prompt, self.negative_prompt
        self.history.move(len(self.history) - 1, 0)
        while len(self.history) > HISTORY_LENGTH:
            self.history.remove(len(self.history) - 1)

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
            "seamless": self.seamless,
            "batch_size": self.batch_size,
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


classes = (LATENTBRIDGE_PG_lora, LATENTBRIDGE_PG_prompt, LATENTBRIDGE_PG_batch_image, LATENTBRIDGE_PG_settings)


def register() -> None:
    bpy.types.Scene.latentbridge = PointerProperty(type=LATENTBRIDGE_PG_settings, name="Latent Bridge",
                                                   description="Latent Bridge settings of this scene")


def unregister() -> None:
    del bpy.types.Scene.latentbridge
