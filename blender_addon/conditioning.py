"""Scene conditioning without bpy: the ControlNet units a request carries, and every upload made
from one capture of the scene (its colour, its exact passes, the selected objects' mask).

The main thread renders (a `Capture`: plain arrays); `build_uploads` then runs on the worker
thread: control maps from the passes (control_maps.py), the mask from the same render's object
index, the colour (blended with the previous animation frame when asked), every PNG encoded, and
the maps tiled into the pixels of the "Latent Bridge Control" image — so the main thread is left
with one `foreach_set` and the submit.

Units follow `protocol.ControlUnit`; unit i's image is the upload with role `control.<i>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from . import control_maps, pixels, png
from .multiview import tile_views

# The maps the artist can tick, in the order their units go into a request.
CONTROL_KINDS = ("depth", "normal", "edges", "segmentation")
# Wire control types a map kind can be sent as (the first is the default). The edge map is white
# lines on black: what line-art, canny, soft-edge and scribble ControlNets all take.
CONTROL_TYPES = {
    "depth": ("depth",),
    "normal": ("normal",),
    "edges": ("lineart", "canny", "softedge", "scribble"),
    "segmentation": ("segmentation",),
}
CONTROL_MODES = ("balanced", "prompt", "control")


class ConditioningError(ValueError):
    """Control settings that cannot make a request (the message says which)."""


@dataclass(frozen=True)
class ControlSpec:
    """One ticked control: which map, sent as which control type, with its unit settings and
    the options of its map."""

    kind: str
    control_type: str = ""
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "balanced"
    model: str = ""  # "" = the server's default ControlNet for this type
    edge_width: int = 1
    segmentation_source: str = "object"
    normal_convention: str = "controlnet"

    def __post_init__(self) -> None:
        if self.kind not in CONTROL_TYPES:
            raise ConditioningError(f"unknown control {self.kind!r} (known: {', '.join(CONTROL_KINDS)})")
        if not self.control_type:
            object.__setattr__(self, "control_type", CONTROL_TYPES[self.kind][0])
        if self.control_type not in CONTROL_TYPES[self.kind]:
            raise ConditioningError(f"a {self.kind} map cannot be sent as {self.control_type!r} control")
        if not 0.0 <= self.weight <= 2.0:
            raise ConditioningError(f"{self.kind} control: weight {self.weight} is outside 0..2")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ConditioningError(f"{self.kind} control: it must start before it ends (start {self.start}, end {self.end})")
        if self.mode not in CONTROL_MODES:
            raise ConditioningError(f"{self.kind} control: mode must be one of {', '.join(CONTROL_MODES)}")

    def unit(self) -> dict[str, Any]:
        """The wire `ControlUnit` (its image: the upload `control.<i>`)."""
        unit: dict[str, Any] = {"type": self.control_type, "weight": round(self.weight, 4),
                                "start": round(self.start, 4), "end": round(self.end, 4), "mode": self.mode}
        if self.model:
            unit["model"] = self.model
        return unit

    def build_map(self, passes: control_maps.PassSet) -> np.ndarray:
        return control_maps.build_maps(passes, [self.kind], segmentation_source=self.segmentation_source,
                                       edge_width=self.edge_width, normal_convention=self.normal_convention)[self.kind]


def passes_needed(specs: Iterable[ControlSpec]) -> set[str]:
    """The render passes the specs' maps need."""
    needed: set[str] = set()
    for spec in specs:
        needed |= control_maps.passes_for([spec.kind], spec.segmentation_source)
    return needed


def add_units(request: dict[str, Any], specs: list[ControlSpec]) -> dict[str, Any]:
    """The request with one ControlNet unit per spec (none: the request unchanged)."""
    if specs:
        request["controls"] = [s.unit() for s in specs]
    return request


def control_roles(count: int) -> list[str]:
    return [f"control.{i}" for i in range(count)]


@dataclass
class Capture:
    """What one capture of the scene gave, as plain data for the worker thread."""

    color: np.ndarray | None = None  # uint8 RGB (h, w, 3), top row first: the init image
    passes: control_maps.PassSet | None = None
    mask_objects: tuple[str, ...] | None = None  # names whose object-index mask is the inpaint mask
    mask_size: tuple[int, int] | None = None  # (width, height) the mask must have (the init's)
    previous: np.ndarray | None = None  # float RGB(A) 0..1: the previous animation frame's result
    previous_weight: float = 0.0


@dataclass
class Uploads:
    """The PNG uploads by role, the maps themselves (by kind), and the "Latent Bridge Control"
    image's pixels (the maps side by side, in Blender's layout)."""

    images: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    control_kinds: list[str] = field(default_factory=list)  # kind of control.<i>
    shown: np.ndarray | None = None
    shown_size: tuple[int, int] = (0, 0)


def blend_previous(color: np.ndarray, previous: np.ndarray, weight: float) -> np.ndarray:
    """(1 − weight) × colour + weight × previous (resized to the colour's size), uint8 RGB."""
    prev = np.asarray(previous, np.float32)[..., :3]
    prev = pixels.nearest_resize(prev, (color.shape[1], color.shape[0]))
    mixed = (1.0 - weight) * (pixels.opaque_rgb(color).astype(np.float32) / 255.0) + weight * prev
    return png.float_to_uint8(mixed)


def build_uploads(capture: Capture, specs: list[ControlSpec], *, show: bool = True) -> Uploads:
    """Every upload of one capture (runs on the worker thread)."""
    out = Uploads()
    if capture.color is not None:
        color = capture.color
        if capture.previous is not None and capture.previous_weight > 0:
            color = blend_previous(color, capture.previous, capture.previous_weight)
        out.images["init"] = (png.encode_png(pixels.opaque_rgb(color)), "png")
    if capture.mask_objects is not None:
        if capture.passes is None:
            raise ConditioningError("the selected objects' mask needs the object index pass")
        mask = capture.passes.object_mask(capture.mask_objects)
        if not mask.any():
            raise ConditioningError("None of the selected objects is seen from the camera: nothing to repaint")
        size = capture.mask_size or (mask.shape[1], mask.shape[0])
        out.images["mask"] = (png.encode_png(pixels.nearest_resize(mask, size).astype(np.uint8) * np.uint8(255)), "png")
    if specs:
        if capture.passes is None:
            raise ConditioningError("control maps need the render passes")
        for i, spec in enumerate(specs):
            image = spec.build_map(capture.passes)
            out.maps.setdefault(spec.kind, image)
            out.control_kinds.append(spec.kind)
            out.images[f"control.{i}"] = (png.encode_png(image), "png")
        if show:
            grid = tile_views(list(out.maps.values()))
            out.shown = pixels.blender_rgba(grid)
            out.shown_size = (grid.shape[1], grid.shape[0])
    return out
