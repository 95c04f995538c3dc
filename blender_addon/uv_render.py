"""Blender side of the projection: one cheap render per view that names, for every pixel, the
texel it sees; view cameras; UV triangles; float textures into images.

The UV render is Cycles at 1 sample with a near-zero box pixel filter (each pixel is the
surface at its centre, no anti-aliasing that would blend UVs), every object drawn with one
override material whose emission is (u, v, object number) — the render-active UV map, the one
an Image Texture node reads by default — and the Z and Normal passes on. The render is saved as
an uncompressed multilayer EXR (float, no view transform) and read with `render_files.read_exr`: exact
UVs, planar depth and world normals from ONE render, no colour management in the way. Target
objects are numbered through `pass_index` for the render only; other objects still occlude.
Several views render in one session (`render_uv_steps`), with persistent data on so Blender
syncs the scene once and only the camera changes between views. Everything the render changes
is put back afterwards.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from typing import Any, Iterator

import bpy
import numpy as np
from mathutils import Matrix

from . import render_files
from .apply import write_pixels
from .pixels import blender_rgba
from .capture import CaptureError, temporarily
from .projection import ViewSurface
from .views import ProjectionError, ViewCamera, camera_from_blender

UV_MATERIAL = "Latent Bridge UV Render"
VIEW_COLLECTION = "Latent Bridge Views"
VIEW_PREFIX = "Latent Bridge View"


def uv_material() -> bpy.types.Material:
    """The override material: emission = (u, v, object index), strength 1 (rebuilt each time)."""
    material = bpy.data.materials.get(UV_MATERIAL) or bpy.data.materials.new(UV_MATERIAL)
    if material.node_tree is None:  # Blender < 5 creates materials without a node tree
        material.use_nodes = True
    tree = material.node_tree
    tree.nodes.clear()
    coords = tree.nodes.new("ShaderNodeTexCoord")
    info = tree.nodes.new("ShaderNodeObjectInfo")
    split = tree.nodes.new("ShaderNodeSeparateXYZ")
    join = tree.nodes.new("ShaderNodeCombineXYZ")
    emission = tree.nodes.new("ShaderNodeEmission")
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    emission.inputs["Strength"].default_value = 1.0
    material.cycles.emission_sampling = "NONE"  # not a light: no light tree over every triangle
    tree.links.new(coords.outputs["UV"], split.inputs["Vector"])
    tree.links.new(split.outputs["X"], join.inputs["X"])
    tree.links.new(split.outputs["Y"], join.inputs["Y"])
    tree.links.new(info.outputs["Object Index"], join.inputs["Z"])
    tree.links.new(join.outputs["Vector"], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


@contextlib.contextmanager
def _exr_output(scene: bpy.types.Scene) -> Iterator[None]:
    """Render output = uncompressed 32-bit multilayer EXR. Blender 5 filters file_format by
    media_type, so both are set, and restored, media type first."""
    settings = scene.render.image_settings
    names = [n for n in ("media_type", "file_format", "color_mode", "color_depth", "exr_codec") if hasattr(settings, n)]
    saved = [(n, getattr(settings, n)) for n in names]
    try:
        if hasattr(settings, "media_type"):
            settings.media_type = "MULTI_LAYER_IMAGE"
        settings.file_format = "OPEN_EXR_MULTILAYER"
        settings.color_depth = "32"
        settings.exr_codec = "NONE"
        yield
    finally:
        for name, value in saved:
            setattr(settings, name, value)


def _view_layer(scene: bpy.types.Scene) -> bpy.types.ViewLayer:
    layer = bpy.context.view_layer
    return layer if layer is not None and scene.view_layers.get(layer.name) == layer else scene.view_layers[0]


def _render_settings(scene: bpy.types.Scene, width: int, height: int, persistent: bool) -> list[tuple[Any, str, Any]]:
    render, cycles, view = scene.render, scene.cycles, scene.view_settings
    return [
        (render, "engine", "CYCLES"),
        (render, "resolution_x", width), (render, "resolution_y", height), (render, "resolution_percentage", 100),
        (render, "pixel_aspect_x", 1.0), (render, "pixel_aspect_y", 1.0),
        (render, "use_border", False), (render, "film_transparent", True), (render, "use_motion_blur", False),
        (render, "use_compositing", False), (render, "use_sequencer", False), (render, "use_single_layer", True),
        # Between the views of one session only the camera changes: Blender keeps the synced
        # scene (and evaluated modifiers) instead of rebuilding it for every view.
        (render, "use_persistent_data", persistent or render.use_persistent_data),
        (cycles, "samples", 1), (cycles, "use_denoising", False), (cycles, "use_adaptive_sampling", False),
        (cycles, "pixel_filter_type", "BOX"), (cycles, "filter_width", 0.01), (cycles, "max_bounces", 0),
        (view, "view_transform", "Raw"), (view, "look", "None"), (view, "exposure", 0.0), (view, "gamma", 1.0),
    ]


@contextlib.contextmanager
def render_session(
    scene: bpy.types.Scene, width: int, height: int, *, material: bpy.types.Material | None = None,
    extra: list[tuple[Any, str, Any]] | None = None, persistent: bool = False,
) -> Iterator[Any]:
    """Exact-render settings applied for a block of renders: Cycles, 1 sample, near-zero box
    filter, no view transform, transparent film, Combined + Z + Normal of the active view layer,
    `material` overriding every object's material. Yields `render(camera)` → channels (see
    `render_channels`). Everything is put back on exit."""
    if not hasattr(scene, "cycles"):
        raise CaptureError("Projection renders with Cycles: enable the Cycles add-on in Preferences")
    layer = _view_layer(scene)
    settings = _render_settings(scene, width, height, persistent) + [
        (scene, "camera", scene.camera), (layer, "material_override", material),
        (layer, "use_pass_z", True), (layer, "use_pass_normal", True),
    ] + list(extra or [])
    fd, path = tempfile.mkstemp(prefix="latentbridge-uv-", suffix=".exr")
    os.close(fd)

    def render(camera: bpy.types.Object) -> dict[str, np.ndarray]:
        if camera is None or camera.type != "CAMERA":
            raise CaptureError("Projection needs a camera object for every view")
        scene.camera = camera
        with temporarily(*([(camera.data.dof, "use_dof", False)] if camera.data.dof.use_dof else [])):
            bpy.ops.render.render(write_still=False, scene=scene.name)
        result = bpy.data.images.get("Render Result")
        if result is None:
            raise CaptureError("Rendering produced no result")
        result.save_render(filepath=path, scene=scene)
        with open(path, "rb") as f:
            channels = render_files.read_exr(f.read())
        return _passes({k: v.astype(np.float32, copy=False) for k, v in channels.items()}, layer.name)

    try:
        with temporarily(*settings), _exr_output(scene):
            yield render
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def _passes(channels: dict[str, np.ndarray], layer: str) -> dict[str, np.ndarray]:
    def get(name: str) -> np.ndarray:
        found = channels.get(f"{layer}.{name}")
        if found is None:
            raise CaptureError(f"the render has no {name} pass")
        return found

    return {
        "combined": np.stack([get(f"Combined.{c}") for c in "RGBA"], axis=-1),
        "depth": get("Depth.Z"),
        "normal": np.stack([get(f"Normal.{c}") for c in "XYZ"], axis=-1),
    }


def render_channels(
    scene: bpy.types.Scene, camera: bpy.types.Object, width: int, height: int, *, material: bpy.types.Material | None = None,
) -> dict[str, np.ndarray]:
    """One exact render: {"combined": (h, w, 4) linear, "depth": (h, w) planar, "normal":
    (h, w, 3) world space}, top row first."""
    with render_session(scene, width, height, material=material) as render:
        return render(camera)


def view_camera(camera: bpy.types.Object, width: int, height: int) -> ViewCamera:
    """The ViewCamera of a Blender camera object at a render resolution."""
    if camera is None or camera.type != "CAMERA":
        raise ProjectionError("not a camera object")
    data = camera.data
    if data.type == "PANO":
        raise ProjectionError(f"camera “{camera.name}” is panoramic: projection needs a perspective or orthographic camera")
    return camera_from_blender(
        np.array(camera.matrix_world, dtype=np.float64), kind=data.type, lens=data.lens, sensor_width=data.sensor_width,
        sensor_height=data.sensor_height, sensor_fit=data.sensor_fit, ortho_scale=data.ortho_scale, shift_x=data.shift_x,
        shift_y=data.shift_y, clip_start=data.clip_start, clip_end=data.clip_end, resolution=(width, height),
    )


def _targets(scene: bpy.types.Scene, objects: list[bpy.types.Object]) -> tuple[list[bpy.types.Object], list[tuple[Any, str, Any]]]:
    targets = [o for o in objects if o.type == "MESH"]
    if not targets:
        raise CaptureError("Select the mesh objects to texture first")
    numbers = {o.name: i + 1 for i, o in enumerate(targets)}
    return targets, [(o, "pass_index", numbers.get(o.name, 0)) for o in scene.objects]


def _surface(channels: dict[str, np.ndarray], count: int, camera: ViewCamera) -> ViewSurface:
    combined = channels["combined"]
    index = np.rint(combined[..., 2]).astype(np.int32) - 1
    coverage = (combined[..., 3] > 0.5) & (index >= 0) & (index < count)
    return ViewSurface(
        uv=combined[..., :2], coverage=coverage, depth=channels["depth"],
        normal=camera.normals_to_camera(channels["normal"]), object_index=np.where(coverage, index, -1),
    )


def render_uv_steps(
    scene: bpy.types.Scene, objects: list[bpy.types.Object], cameras: list[bpy.types.Object], width: int, height: int
) -> Iterator[tuple[ViewSurface, ViewCamera]]:
    """UV renders of several views in one render session (the scene is synced once): yields
    (surface, camera) per view; the scene's settings stay changed until the generator ends or
    is closed. surface.object_index is the position of the object in `objects` (-1:
    background or another object, which still occludes)."""
    targets, extra = _targets(scene, objects)
    with render_session(scene, width, height, material=uv_material(), extra=extra, persistent=len(cameras) > 1) as render:
        for camera in cameras:
            channels = render(camera)
            view = view_camera(camera, width, height)
            yield _surface(channels, len(targets), view), view


def render_uv_views(
    scene: bpy.types.Scene, objects: list[bpy.types.Object], cameras: list[bpy.types.Object], width: int, height: int
) -> list[tuple[ViewSurface, ViewCamera]]:
    return list(render_uv_steps(scene, objects, cameras, width, height))


def render_uv(
    scene: bpy.types.Scene, objects: list[bpy.types.Object], camera: bpy.types.Object, width: int, height: int
) -> tuple[ViewSurface, ViewCamera]:
    """The UV render of one view: (surface, its camera)."""
    return render_uv_views(scene, objects, [camera], width, height)[0]


def ensure_view_cameras(scene: bpy.types.Scene, cameras: list[ViewCamera], prefix: str = VIEW_PREFIX) -> list[bpy.types.Object]:
    """Camera objects for views (named "<prefix> 1…N" in the "Latent Bridge Views" collection),
    created or updated in place; ones left over from an earlier, larger set are removed."""
    collection = bpy.data.collections.get(VIEW_COLLECTION) or bpy.data.collections.new(VIEW_COLLECTION)
    if scene.collection.children.get(collection.name) is None:
        scene.collection.children.link(collection)
    out = []
    for i, view in enumerate(cameras):
        name = f"{prefix} {i + 1}"
        obj = bpy.data.objects.get(name)
        if obj is None or obj.type != "CAMERA":
            obj = bpy.data.objects.new(name, bpy.data.cameras.new(name))
        if collection.objects.get(obj.name) is None:
            collection.objects.link(obj)
        data = obj.data
        data.type = view.kind
        data.lens, data.sensor_width, data.sensor_height, data.sensor_fit = view.lens, view.sensor_width, view.sensor_height, view.sensor_fit
        data.ortho_scale, data.shift_x, data.shift_y = view.ortho_scale, view.shift_x, view.shift_y
        data.clip_start, data.clip_end = view.clip_start, view.clip_end
        obj.matrix_world = Matrix(view.matrix_world.tolist())
        out.append(obj)
    i = len(cameras) + 1
    while (old := bpy.data.objects.get(f"{prefix} {i}")) is not None and old.type == "CAMERA":
        data = old.data
        bpy.data.objects.remove(old)
        if data.users == 0:
            bpy.data.cameras.remove(data)
        i += 1
    bpy.context.view_layer.update()
    return out


@contextlib.contextmanager
def _evaluated_mesh(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> Iterator[bpy.types.Mesh]:
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        yield mesh
    finally:
        evaluated.to_mesh_clear()


def uv_triangles(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph | None = None) -> np.ndarray:
    """(T, 3, 2) UVs of the evaluated mesh's triangles in its render-active UV map (the map
    the UV render and a default Image Texture node use)."""
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    with _evaluated_mesh(obj, depsgraph) as mesh:
        layer = next((uv for uv in mesh.uv_layers if uv.active_render), None) or mesh.uv_layers.active
        if layer is None:
            raise ProjectionError(f"“{obj.name}” has no UV map (unwrap it, or use Smart UV Project)")
        mesh.calc_loop_triangles()
        loops = np.empty(len(mesh.loop_triangles) * 3, np.int32)
        mesh.loop_triangles.foreach_get("loops", loops)
        uv = np.empty(len(mesh.loops) * 2, np.float32)
        layer.uv.foreach_get("vector", uv)
    return uv.reshape(-1, 2)[loops].reshape(-1, 3, 2)


def smart_uv_project(obj: bpy.types.Object, *, angle_limit_deg: float = 66.0, island_margin: float = 0.02) -> None:
    """Give a mesh a UV map by Smart UV Project (for objects without UVs, on the artist's
    request); the new map becomes the active and render-active one. Selection, active object
    and mode are restored."""
    if obj.type != "MESH":
        raise ProjectionError(f"“{obj.name}” is not a mesh")
    layer = bpy.context.view_layer
    was_active, was_selected, was_mode = layer.objects.active, [o for o in layer.objects if o.select_get()], obj.mode
    if was_mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    try:
        for other in was_selected:
            other.select_set(False)
        obj.select_set(True)
        layer.objects.active = obj
        uv = obj.data.uv_layers.new(name="Latent Bridge UV")
        obj.data.uv_layers.active = uv
        uv.active_render = True
        bpy.ops.object.mode_set(mode="EDIT")
        bpy.ops.mesh.select_all(action="SELECT")
        bpy.ops.uv.smart_project(angle_limit=math.radians(angle_limit_deg), island_margin=island_margin)
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        obj.select_set(False)
        for other in was_selected:
            other.select_set(True)
        layer.objects.active = was_active
        if was_mode != "OBJECT" and was_active is not None:
            bpy.ops.object.mode_set(mode=was_mode)


def world_points(objects: list[bpy.types.Object], depsgraph: bpy.types.Depsgraph | None = None) -> np.ndarray:
    """World positions (N, 3) of the evaluated vertices of all objects (for framing)."""
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    out = []
    for obj in objects:
        if obj.type != "MESH":
            continue
        with _evaluated_mesh(obj, depsgraph) as mesh:
            co = np.empty(len(mesh.vertices) * 3, np.float64)
            mesh.vertices.foreach_get("co", co)
        m = np.array(obj.matrix_world, dtype=np.float64)
        out.append(co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3])
    return np.concatenate(out) if out else np.zeros((0, 3))


def write_texture(name: str, pixels: np.ndarray, *, colorspace: str = "sRGB", float_buffer: bool = False) -> bpy.types.Image:
    """Write (h, w, 1|3|4) pixels in [0, 1] (top row first) into the image `name`, created or
    resized as needed, with one `foreach_set`. Returns the image (not packed)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4):
        raise ProjectionError(f"a texture has 1, 3 or 4 channels, got {pixels.shape[2]}")
    height, width = pixels.shape[:2]
    return write_pixels(name, blender_rgba(pixels), width, height, float_buffer=float_buffer, colorspace=colorspace)
