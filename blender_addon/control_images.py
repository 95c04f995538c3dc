"""Control maps into Blender images: shown to the artist, and packed with a result.

The maps are data, not colour: they go into byte images tagged Non-Color, so what the Image
Editor shows (and what a shader would read) are exactly the bytes sent to the server.
"""

from __future__ import annotations

import bpy
import numpy as np

from .apply import pack_png, write_pixels
from .pixels import blender_rgba

CONTROL_IMAGE = "Latent Bridge Control"
KIND_PROP = "latentbridge_control"


def show_control_map(rgb: np.ndarray, name: str = CONTROL_IMAGE, kind: str = "") -> bpy.types.Image:
    """Write a control map (uint8 (h, w, 3|4), top row first) into the image `name`, so the artist
    can look at it in the Image Editor."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError("a control map is a uint8 array of shape (height, width, 3 or 4)")
    return show_pixels(blender_rgba(rgb), rgb.shape[1], rgb.shape[0], name, kind)


def show_pixels(flat: np.ndarray, width: int, height: int, name: str = CONTROL_IMAGE, kind: str = "") -> bpy.types.Image:
    """Pixels already in Blender's layout (`pixels.blender_rgba`, made off the main thread) into
    the byte image `name` (Non-Color) with one `foreach_set`."""
    image = write_pixels(name, flat, width, height, float_buffer=False, colorspace="Non-Color")
    if kind:
        image[KIND_PROP] = kind
    return image


def pack_control_map(png_bytes: bytes, name: str, width: int, height: int, kind: str) -> bpy.types.Image:
    """A new image holding the PNG bytes of a control map (packed into the .blend, kept even
    when unused), tagged with its kind, to store beside the result it conditioned. Encode the PNG
    off the main thread (`png.encode_png(map)`)."""
    image = pack_png(png_bytes, name, width, height)
    image.colorspace_settings.name = "Non-Color"
    image[KIND_PROP] = kind
    return image
