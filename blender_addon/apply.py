"""Pixels into Blender: live previews, packed results with their request, texture wiring.

A preview is applied in three stages, one per UI tick (see `PreviewWriter`): decoding (Blender
decodes the JPEG/PNG bytes packed into a scratch image), reading its pixels into a float buffer,
and writing them into the preview image with `foreach_set`.
"""

from __future__ import annotations

import json
from typing import Any

import bpy
import numpy as np

PREVIEW_IMAGE = "Latent Bridge Preview"
TEXTURE_NODE = "Latent Bridge Texture"
NEW_MATERIAL = "Latent Bridge Material"
REQUEST_PROP = "latentbridge_request"


def ensure_preview_image(width: int, height: int, name: str = PREVIEW_IMAGE) -> bpy.types.Image:
    """The float-buffer image previews are written into (created or resized as needed)."""
    image = bpy.data.images.get(name)
    if image is None or image.source != "GENERATED":
        if image is not None:
            image.name = name + " (old)"
        image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=True)
    elif tuple(image.size) != (width, height):
        image.scale(width, height)
    return image


def image_from_bytes(data: bytes, fmt: str) -> bpy.types.Image:
    """An image holding `data` (packed), decoded now so the next step only copies pixels."""
    scratch = bpy.data.images.new("Latent Bridge Scratch", 8, 8)
    scratch.source = "FILE"
    scratch.filepath_raw = f"//latentbridge_scratch.{'jpg' if fmt == 'jpeg' else fmt}"
    scratch.pack(data=data, data_len=len(data))
    scratch.size[:]  # reading the size makes Blender decode the buffer now
    return scratch


class PreviewWriter:
    """Decodes preview bytes and writes them into a float preview image in three stages, one per
    UI tick, so no tick pays for more than one: decode (Blender reads the JPEG/PNG), read (its
    pixels into a reused float buffer) and write (`foreach_set` into the preview image)."""

    def __init__(self) -> None:
        self._scratch: bpy.types.Image | None = None  # decoded, pixels not read yet
        self._pending_size: tuple[int, int] | None = None  # pixels read into _buffer, not written yet
        self._target: str | None = None
        self._buffer = np.empty(0, np.float32)

    @property
    def busy(self) -> bool:
        return self._scratch is not None or self._pending_size is not None

    def begin(self, data: bytes, fmt: str, target: bpy.types.Image) -> None:
        """Stage 1: decode. A newer preview replaces one that was not written yet."""
        self.discard()
        self._scratch = image_from_bytes(data, fmt)
        self._target = target.name

    def begin_pixels(self, pixels: np.ndarray, width: int, height: int, target: bpy.types.Image) -> None:
        """A preview already in Blender's pixel layout (a raw preview): only the write stage is left."""
        self.discard()
        self._buffer = pixels
        self._pending_size = (width, height)
        self._target = target.name

    def step(self) -> bpy.types.Image | None:
        """Run the next stage; returns the preview image once its pixels are written."""
        if self._scratch is not None:
            self._read()
            return None
        if self._pending_size is not None:
            return self._write()
        return None

    def finish(self) -> bpy.types.Image | None:
        """All remaining stages at once (for callers that do not mind one long tick)."""
        image = None
        while self.busy:
            image = self.step()
        return image

    def _read(self) -> None:
        scratch, self._scratch = self._scratch, None
        try:
            width, height = scratch.size
            if width == 0 or height == 0:
                return
            n = width * height * 4
            if self._buffer.size != n:
                self._buffer = np.empty(n, np.float32)
            scratch.pixels.foreach_get(self._buffer)
            self._pending_size = (width, height)
        finally:
            bpy.data.images.remove(scratch)

    def _write(self) -> bpy.types.Image | None:
        (width, height), self._pending_size = self._pending_size, None
        target = bpy.data.images.get(self._target or "")
        if target is None:
            return None
        if tuple(target.size) != (width, height):
            target.scale(width, height)
        target.pixels.foreach_set(self._buffer)
        target.update()
        return target

    def discard(self) -> None:
        self._pending_size = None
        if self._scratch is not None:
            bpy.data.images.remove(self._scratch)
            self._scratch = None


def write_pixels(name: str, flat: np.ndarray, width: int, height: int, *, float_buffer: bool, colorspace: str) -> bpy.types.Image:
    """Pixels in Blender's layout (flat float32 RGBA, bottom row first: `pixels.blender_rgba`,
    made off the main thread) into the generated image `name`, created or resized as needed, with
    one `foreach_set`. An image of that name that is not such an image is renamed, never changed."""
    image = bpy.data.images.get(name)
    if image is None or image.source != "GENERATED" or image.is_float != float_buffer:
        if image is not None:
            image.name = name + " (old)"
        image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=float_buffer)
    elif tuple(image.size) != (width, height):
        image.scale(width, height)
    if image.colorspace_settings.name != colorspace:
        image.colorspace_settings.name = colorspace
    image.pixels.foreach_set(flat)
    image.update()
    return image


def pack_png(png_bytes: bytes, name: str, width: int, height: int) -> bpy.types.Image:
    """A new image whose PNG bytes are packed into the .blend (kept even when unused)."""
    image = bpy.data.images.new(name, width, height)
    image.source = "FILE"
    image.filepath_raw = f"//{bpy.path.clean_name(image.name)}.png"
    image.file_format = "PNG"
    image.pack(data=png_bytes, data_len=len(png_bytes))
    image.use_fake_user = True
    return image


def store_request(image: bpy.types.Image, request: dict[str, Any], seed: int, job_id: str | None = None) -> None:
    """The full request as JSON plus the fields an artist looks for, as custom properties."""
    full = {**request, "seed": seed}
    image[REQUEST_PROP] = json.dumps(full, sort_keys=True)
    image["latentbridge_seed"] = seed
    image["latentbridge_prompt"] = full.get("prompt", "")
    image["latentbridge_mode"] = full.get("mode", "txt2img")
    if job_id:
        image["latentbridge_job"] = job_id


def stored_request(image: bpy.types.Image) -> dict[str, Any] | None:
    raw = image.get(REQUEST_PROP)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _principled(tree: bpy.types.NodeTree) -> bpy.types.Node:
    node = next((n for n in tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if node is None:
        node = tree.nodes.new("ShaderNodeBsdfPrincipled")
        output = next((n for n in tree.nodes if n.type == "OUTPUT_MATERIAL"), None) or tree.nodes.new("ShaderNodeOutputMaterial")
        tree.links.new(node.outputs["BSDF"], output.inputs["Surface"])
    return node


def wire_texture(material: bpy.types.Material, image: bpy.types.Image) -> bpy.types.Node:
    """Image Texture (repeat extension) → Principled Base Color; reuses our node if present."""
    if bpy.app.version < (5, 0, 0) and not material.use_nodes:
        material.use_nodes = True  # deprecated from 5.0 (materials always use nodes there)
    tree = material.node_tree
    bsdf = _principled(tree)
    node = tree.nodes.get(TEXTURE_NODE)
    if node is None:
        node = tree.nodes.new("ShaderNodeTexImage")
        node.name = node.label = TEXTURE_NODE
        node.location = (bsdf.location.x - 320, bsdf.location.y)
    node.image = image
    node.extension = "REPEAT"
    tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    return node


def assign_texture(objects: list[bpy.types.Object], image: bpy.types.Image) -> list[bpy.types.Material]:
    """Wire `image` into each object's active material, creating a material when there is none."""
    done: list[bpy.types.Material] = []
    for obj in objects:
        if obj.type not in {"MESH", "CURVE", "SURFACE", "META", "FONT"}:
            continue
        material = obj.active_material
        if material is None:
            material = bpy.data.materials.new(NEW_MATERIAL)
            if obj.data.materials:
                obj.active_material = material
            else:
                obj.data.materials.append(material)
        if material not in done:
            wire_texture(material, image)
            done.append(material)
    return done


def show_in_image_editors(image: bpy.types.Image, replace: tuple[str, ...] = ()) -> None:
    """Show `image` in Image Editors that show nothing, our preview, or an image named in `replace`."""
    wm = bpy.context.window_manager
    if wm is None:
        return
    ours = {PREVIEW_IMAGE, *replace}
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type != "IMAGE_EDITOR":
                continue
            space = area.spaces.active
            if space.image is None or space.image.name in ours:
                space.image = image
                area.tag_redraw()


def redraw_all() -> None:
    wm = bpy.context.window_manager
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "IMAGE_EDITOR", "PROPERTIES", "STATUSBAR"}:
                area.tag_redraw()
