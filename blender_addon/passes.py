"""Exact passes from ONE render: depth, normals, object and material indices, plus the colour.

`render_passes(scene, wanted)` renders the scene once with Cycles and the view-layer passes the
control maps need, then reads every pass as a float numpy array (`control_maps.PassSet`), ready for
`control_maps` to turn into ControlNet maps off the main thread.

Why this way (checked on Blender 4.5 and 5.0):
- Only Cycles gives every pass (Workbench renders depth only, EEVEE no index passes) and it writes
  depth and the index passes from the first sample, unfiltered. With the pixel filter at its
  minimum width every sample goes through the pixel centre, so a pixel's index, depth and normal
  are exactly those of the surface at its centre: masks are pixel-exact, normals are not blurred.
- Module-mode "Render Result" has no pixels and the compositor's socket names and API changed in
  5.x, so the result is saved instead: an uncompressed multilayer EXR for the passes (data, never
  colour-managed) and an uncompressed Targa for the colour (view transform applied, as the artist
  sees it), both read back with numpy (render_files.py). No compositor is involved.
- Pass names differ between versions ("IndexOB" in 4.x, "Object Index" in 5.x): both are known.

Every scene setting changed for the render (engine, samples, filter, passes, resolution, output
format, motion blur, depth of field, compositing, and the objects' and materials' pass indices,
which are made unique for the render) is put back afterwards, even when the render fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from typing import Any, Iterable, Iterator

import bpy
import numpy as np

from . import render_files
from .capture import CaptureError, render_op, temporarily
from .control_maps import PASS_KINDS, PassSet
from .views import ViewCamera, camera_from_blender
from .views import overscan as overscan_camera

# Cycles samples for the colour when the scene renders with another engine (its own look is not
# available from a Cycles render anyway); a Cycles scene keeps its own sampling settings.
COLOR_SAMPLES = 8
# Cycles' smallest pixel filter width: every sample lands within 0.005 px of the pixel centre.
EXACT_FILTER_WIDTH = 0.01

# Pass kind → (view-layer flag, names of the pass in the saved EXR across Blender versions).
_PASSES = {
    "depth": ("use_pass_z", ("Depth", "Z")),
    "normal": ("use_pass_normal", ("Normal",)),
    "object_index": ("use_pass_object_index", ("Object Index", "IndexOB")),
    "material_index": ("use_pass_material_index", ("Material Index", "IndexMA")),
}
# Object types that never show up in a render (no index worth spending on them).
_UNRENDERED = {"EMPTY", "CAMERA", "LIGHT", "LIGHT_PROBE", "SPEAKER", "ARMATURE", "LATTICE"}
_MAX_INDEX = 32767  # Object.pass_index / Material.pass_index hard maximum


def render_passes(
    scene: bpy.types.Scene,
    wanted: Iterable[str],
    size: tuple[int, int] | None = None,
    *,
    samples: int | None = None,
    overscan: tuple[int, int, int, int] | None = None,
    timings: dict[str, float] | None = None,
) -> PassSet:
    """Render `scene` once from its camera and return the `wanted` passes (any of
    "color", "depth", "normal", "object_index", "material_index") at `size` (width, height;
    default: the render resolution with its percentage).

    `samples`: Cycles samples; default 1 when no colour is wanted (enough for exact data passes),
    else the scene's own when it renders with Cycles, else COLOR_SAMPLES. `overscan` (left, top,
    right, bottom) pixels grows the frame past the camera's on each side, every pixel of the
    camera's own frame staying where it was (`views.overscan`: outpainting's extended canvas).
    `timings`, if given, receives the seconds spent rendering and reading each file ("render",
    "passes", "color")."""
    wanted = set(wanted)
    unknown = wanted - set(PASS_KINDS)
    if unknown:
        raise ValueError(f"unknown pass kinds {sorted(unknown)} (known: {', '.join(PASS_KINDS)})")
    if not wanted:
        raise ValueError("render_passes needs at least one pass kind")
    camera = scene.camera
    if camera is None:
        raise CaptureError("The scene has no active camera to render from")
    width, height = size if size is not None else _render_size(scene)
    if int(width) < 1 or int(height) < 1:
        raise CaptureError(f"Cannot render passes at {width}×{height} pixels")
    view_layer = _view_layer(scene)
    data_passes = [k for k in _PASSES if k in wanted]

    settings = _render_settings(scene, view_layer, int(width), int(height), wanted, samples)
    if overscan is not None and any(overscan):
        grown, camera_settings = _overscan_settings(camera, int(width), int(height), overscan)
        width, height = grown.width, grown.height
        settings += camera_settings + [(scene.render, "resolution_x", width), (scene.render, "resolution_y", height)]
    object_ids, object_labels, object_settings = ({}, {}, [])
    material_ids, material_labels, material_settings = ({}, {}, [])
    if "object_index" in wanted:
        object_ids, object_labels, object_settings = _unique_indices(_scene_objects(scene))
    if "material_index" in wanted:
        material_ids, material_labels, material_settings = _unique_indices(m for m in bpy.data.materials)

    clock = _Stopwatch(timings)
    with temporarily(*settings, *object_settings, *material_settings), _temp_dir() as folder:
        render_op(scene, view_layer.name)
        clock.lap("render")
        result = bpy.data.images.get("Render Result")
        if result is None:
            raise CaptureError("Rendering produced no result")
        arrays: dict[str, np.ndarray] = {}
        if data_passes:
            exr = _save(result, scene, os.path.join(folder, "passes.exr"), _exr_format(scene))
            arrays.update(_data_passes(render_files.read_exr(exr), view_layer.name, data_passes))
            clock.lap("passes")
        if "color" in wanted:
            tga = _save(result, scene, os.path.join(folder, "color.tga"), _tga_format(scene))
            arrays["color"] = render_files.read_tga(tga).astype(np.float32) / np.float32(255.0)
            clock.lap("color")
    rotation = np.array(camera.matrix_world.to_quaternion().to_matrix(), dtype=np.float64)
    return PassSet(
        width=int(width),
        height=int(height),
        arrays=arrays,
        camera_to_world=rotation,
        object_ids=object_ids,
        object_labels=object_labels,
        material_ids=material_ids,
        material_labels=material_labels,
    )


def _render_size(scene: bpy.types.Scene) -> tuple[int, int]:
    scale = scene.render.resolution_percentage / 100.0
    return max(1, round(scene.render.resolution_x * scale)), max(1, round(scene.render.resolution_y * scale))


def _view_layer(scene: bpy.types.Scene) -> bpy.types.ViewLayer:
    """The view layer the artist is looking at, if it belongs to this scene; else the first."""
    layer = getattr(bpy.context, "view_layer", None)
    if layer is not None and scene.view_layers.get(layer.name) == layer:
        return layer
    return scene.view_layers[0]


def _render_settings(
    scene: bpy.types.Scene,
    view_layer: bpy.types.ViewLayer,
    width: int,
    height: int,
    wanted: set[str],
    samples: int | None,
) -> list[tuple[Any, str, Any]]:
    render, cycles = scene.render, scene.cycles
    was_cycles = render.engine == "CYCLES"
    color = "color" in wanted
    if samples is None:
        samples = (cycles.samples if was_cycles else COLOR_SAMPLES) if color else 1
    settings: list[tuple[Any, str, Any]] = [
        (render, "engine", "CYCLES"),
        (render, "resolution_x", width),
        (render, "resolution_y", height),
        (render, "resolution_percentage", 100),
        (render, "use_border", False),
        (render, "use_multiview", False),
        (render, "use_motion_blur", False),  # passes of the frame itself, not smeared over time
        (render, "use_compositing", False),  # the raw layer, pixel-aligned with its passes
        (render, "use_sequencer", False),
        (cycles, "samples", max(1, int(samples))),
        (cycles, "filter_width", EXACT_FILTER_WIDTH),
        (view_layer, "use", True),
    ]
    if not color:
        # Data passes come from the camera rays' first hits: no colour, so no denoising and no
        # light bounces to trace (transparent bounces still pass alpha-cut surfaces).
        settings += [(cycles, "use_denoising", False), (cycles, "max_bounces", 0)]
    camera_data = scene.camera.data
    if scene.camera.type == "CAMERA" and camera_data.library is None:
        settings.append((camera_data.dof, "use_dof", False))  # sharp passes, no lens blur
    for kind, (flag, _names) in _PASSES.items():
        if kind in wanted:
            settings.append((view_layer, flag, True))
    return settings


def _overscan_settings(camera: bpy.types.Object, width: int, height: int, sides: tuple[int, int, int, int]) -> tuple[ViewCamera, list[tuple[Any, str, Any]]]:
    """The camera settings (sensor, fit, shift, ortho scale) of a frame grown by `sides` pixels."""
    data = camera.data
    if camera.type != "CAMERA" or data.type == "PANO":
        raise CaptureError("Outpainting with control maps needs a perspective or orthographic camera")
    if data.library is not None:
        raise CaptureError(f"The camera “{camera.name}” is linked from a library: its frame cannot be extended")
    view = camera_from_blender(
        np.array(camera.matrix_world, dtype=np.float64), kind=data.type, lens=data.lens, sensor_width=data.sensor_width,
        sensor_height=data.sensor_height, sensor_fit=data.sensor_fit, ortho_scale=data.ortho_scale, shift_x=data.shift_x,
        shift_y=data.shift_y, clip_start=data.clip_start, clip_end=data.clip_end, resolution=(width, height),
    )
    grown = overscan_camera(view, *sides)
    return grown, [
        (data, "sensor_fit", grown.sensor_fit), (data, "sensor_width", grown.sensor_width),
        (data, "sensor_height", grown.sensor_height), (data, "ortho_scale", grown.ortho_scale),
        (data, "shift_x", grown.shift_x), (data, "shift_y", grown.shift_y),
    ]


def _scene_objects(scene: bpy.types.Scene) -> list[bpy.types.Object]:
    """The scene's objects plus those of collections it instances (which are not scene.objects)."""
    seen: dict[int, bpy.types.Object] = {}
    pending = list(scene.objects)
    visited_collections: set[int] = set()
    while pending:
        obj = pending.pop()
        if obj.as_pointer() in seen:
            continue
        seen[obj.as_pointer()] = obj
        collection = obj.instance_collection if obj.instance_type == "COLLECTION" else None
        if collection is not None and collection.as_pointer() not in visited_collections:
            visited_collections.add(collection.as_pointer())
            pending.extend(collection.all_objects)
    return [o for o in seen.values() if o.type not in _UNRENDERED]


def _unique_indices(data: Iterable[Any]) -> tuple[dict[str, int], dict[int, int], list[tuple[Any, str, Any]]]:
    """Give each editable object (or material) its own pass index for the render.

    Returns name_full → index, index → the artist's own pass index (their label, e.g. an ADE20K
    class for segmentation), and the settings that apply it. Linked (library) data cannot be
    changed: it keeps its own index, and the new ones start above those."""
    items = sorted(data, key=lambda i: i.name_full)
    editable = [i for i in items if i.library is None]
    fixed = [i for i in items if i.library is not None]
    start = 1 + max((i.pass_index for i in fixed), default=0)
    if start + len(editable) - 1 > _MAX_INDEX:
        raise CaptureError(f"Too many objects or materials for unique pass indices (at most {_MAX_INDEX})")
    names: dict[str, int] = {}
    labels: dict[int, int] = {}
    settings: list[tuple[Any, str, Any]] = []
    for n, item in enumerate(editable):
        index = start + n
        names[item.name_full] = index
        labels[index] = item.pass_index
        settings.append((item, "pass_index", index))
    for item in fixed:
        names[item.name_full] = item.pass_index
        if item.pass_index > 0:
            labels.setdefault(item.pass_index, item.pass_index)
    return names, labels, settings


@contextlib.contextmanager
def _image_format(scene: bpy.types.Scene, media: str, file_format: str, **extra: Any) -> Iterator[None]:
    """The scene's output format set for one save, then put back. Later settings depend on earlier
    ones (5.x: the formats a media type offers; the bit depths a format offers), so both setting
    and restoring go in this order — restoring in reverse would clamp e.g. an 8-bit PNG depth
    while the format is still EXR."""
    fmt = scene.render.image_settings
    wanted: list[tuple[str, Any]] = []
    if hasattr(fmt, "media_type"):  # Blender 5.0+
        wanted.append(("media_type", media))
    wanted.append(("file_format", file_format))
    if hasattr(fmt, "color_management"):
        wanted.append(("color_management", "FOLLOW_SCENE"))
    wanted += list(extra.items())
    saved = [(key, getattr(fmt, key)) for key, _ in wanted]
    try:
        for key, value in wanted:
            setattr(fmt, key, value)
        yield
    finally:
        for key, value in saved:
            setattr(fmt, key, value)


def _exr_format(scene: bpy.types.Scene) -> contextlib.AbstractContextManager:
    return _image_format(
        scene, "MULTI_LAYER_IMAGE", "OPEN_EXR_MULTILAYER", color_depth="32", exr_codec="NONE", use_preview=False
    )


def _tga_format(scene: bpy.types.Scene) -> contextlib.AbstractContextManager:
    return _image_format(scene, "IMAGE", "TARGA_RAW", color_mode="RGBA")


def _save(result: bpy.types.Image, scene: bpy.types.Scene, path: str, file_format: contextlib.AbstractContextManager) -> bytes:
    with file_format:
        result.save_render(filepath=path, scene=scene)
    with open(path, "rb") as f:
        return f.read()


def save_color(result: bpy.types.Image, scene: bpy.types.Scene) -> np.ndarray:
    """A render result's colour as the artist sees it (the scene's view transform), uint8 RGBA
    top row first, through an uncompressed Targa (no PNG compression on the main thread)."""
    with _temp_dir() as folder:
        return render_files.read_tga(_save(result, scene, os.path.join(folder, "color.tga"), _tga_format(scene)))


def _data_passes(channels: dict[str, np.ndarray], layer: str, kinds: list[str]) -> dict[str, np.ndarray]:
    prefix = layer + "."
    by_pass: dict[str, dict[str, np.ndarray]] = {}
    for full, values in channels.items():
        if full.startswith(prefix):
            pass_name, _, channel = full[len(prefix):].rpartition(".")
            by_pass.setdefault(pass_name, {})[channel] = values
    out: dict[str, np.ndarray] = {}
    for kind in kinds:
        names = _PASSES[kind][1]
        found = next((by_pass[n] for n in names if n in by_pass), None)
        if found is None:
            raise CaptureError(f"The render has no {kind.replace('_', ' ')} pass (got: {', '.join(sorted(by_pass))})")
        if kind == "normal":
            out[kind] = np.stack([found["X"], found["Y"], found["Z"]], axis=-1)
        else:
            out[kind] = next(iter(found.values()))
    return out


class _Stopwatch:
    def __init__(self, into: dict[str, float] | None) -> None:
        self.into, self.last = into, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.into is not None:
            self.into[name] = now - self.last
        self.last = now


@contextlib.contextmanager
def _temp_dir() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="latentbridge-passes-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
