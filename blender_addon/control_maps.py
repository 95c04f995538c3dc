"""Exact Blender render passes → ControlNet control maps (bpy-free: numpy only, any thread).

Arrays in, arrays out. Every map is uint8 RGB (height, width, 3), top row first, in the colour
conventions the public ControlNet models were trained with (sources in docs/blender-passes.md):

- depth: near = white, far = black, linear in view depth over the visible range, background black.
- normal: camera space, R = left, G = up, B = towards the viewer (ControlNet 1.1 normalbae).
- segmentation: ADE20K palette colours by index (see ade20k.py), background black.
- edges: white lines on black where object or material changes, depth jumps or normals crease.

Inputs are the float passes `passes.render_passes` reads from one Cycles render: `depth` is the Z
pass — distance along the camera's view axis (planar depth, not Euclidean distance; Blender writes
1e10 where no surface was hit); `normal` is the world-space Normal pass (zero on background);
`object_index` / `material_index` are the index passes (0 = background or unlabelled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from . import ade20k

# Depth at or beyond this is "nothing hit" (Cycles writes 1e10, other engines the far clip or inf).
BACKGROUND_DEPTH = 1e9
# The colour of a normal pointing straight at the viewer, (0, 0, 1) → ((0+1)/2, (0+1)/2, 1) × 255:
# what ControlNet normal maps show for a wall facing the camera.
FACING_VIEWER = (128, 128, 255)

MAP_KINDS = ("depth", "normal", "segmentation", "edges")
PASS_KINDS = ("color", "depth", "normal", "object_index", "material_index")


@dataclass
class PassSet:
    """The float passes of one render plus what is needed to interpret them (no bpy objects, so it
    can be handed to a worker thread). `arrays` maps pass kind → array, top row first:
    color (h, w, 4) display-referred 0..1 as the artist sees it; depth (h, w); normal (h, w, 3)
    world space; object_index / material_index (h, w) integer-valued floats."""

    width: int
    height: int
    arrays: dict[str, np.ndarray]
    camera_to_world: np.ndarray  # (3, 3) rotation: columns = camera X (right), Y (up), Z (back)
    object_ids: dict[str, int] = field(default_factory=dict)  # object name_full → object index
    object_labels: dict[int, int] = field(default_factory=dict)  # object index → artist's pass index
    material_ids: dict[str, int] = field(default_factory=dict)
    material_labels: dict[int, int] = field(default_factory=dict)

    def get(self, kind: str) -> np.ndarray:
        if kind not in self.arrays:
            raise KeyError(f"the {kind!r} pass was not rendered (rendered: {sorted(self.arrays)})")
        return self.arrays[kind]

    def object_mask(self, names: Iterable[str]) -> np.ndarray:
        """Exact boolean mask of where the named objects are visible (occlusion included)."""
        ids = [self.object_ids[n] for n in names if n in self.object_ids]
        return index_mask(self.get("object_index"), ids)


def passes_for(kinds: Iterable[str], segmentation_source: str = "object") -> set[str]:
    """The render passes the given map kinds need (feed it to `passes.render_passes`)."""
    needed: set[str] = set()
    for kind in kinds:
        if kind == "depth":
            needed |= {"depth"}
        elif kind == "normal":
            needed |= {"normal"}
        elif kind == "segmentation":
            needed |= {_index_pass(segmentation_source)}
        elif kind == "edges":
            needed |= {"depth", "normal", "object_index", "material_index"}
        else:
            raise ValueError(f"unknown control map kind {kind!r} (known: {', '.join(MAP_KINDS)})")
    return needed


def _index_pass(source: str) -> str:
    if source not in ("object", "material"):
        raise ValueError(f"segmentation source must be 'object' or 'material', not {source!r}")
    return f"{source}_index"


def _grey(values: np.ndarray) -> np.ndarray:
    """Float 0..1 (h, w) → uint8 RGB grey, rounded to nearest."""
    grey = (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def depth_foreground(depth: np.ndarray) -> np.ndarray:
    """Pixels where a surface was hit: finite, positive and nearer than BACKGROUND_DEPTH."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth) & (depth > 0.0) & (depth < BACKGROUND_DEPTH)


def depth_map(
    depth: np.ndarray,
    *,
    foreground: np.ndarray | None = None,
    near_percentile: float = 0.0,
    far_percentile: float = 100.0,
    inverse: bool = False,
) -> np.ndarray:
    """The Z pass as a ControlNet depth map: near = white, far = black, background black.

    Normalised over the visible range: the `near_percentile` of foreground depths maps to 255 and
    the `far_percentile` to 0 (defaults: nearest and farthest visible surface, so the map is linear
    in depth and exact; e.g. 2 / 85 clip outliers the way the Zoe annotator does). `inverse` maps
    1/depth instead (disparity, as MiDaS-style estimators produce). Background — NaN, inf, ≤ 0,
    ≥ BACKGROUND_DEPTH (an infinite far plane), or outside `foreground` — is black. A scene at a
    single depth has no range to spread: its surfaces are all "nearest", white."""
    depth = np.asarray(depth, dtype=np.float64)
    fg = depth_foreground(depth)
    if foreground is not None:
        fg &= foreground
    out = np.zeros(depth.shape, np.float64)
    if not fg.any():
        return _grey(out)
    visible = depth[fg]
    near = visible.min() if near_percentile <= 0 else np.percentile(visible, near_percentile)
    far = visible.max() if far_percentile >= 100 else np.percentile(visible, far_percentile)
    if far - near <= 1e-6 * max(abs(far), 1e-12):
        out[fg] = 1.0
        return _grey(out)
    if inverse:
        out[fg] = (1.0 / visible - 1.0 / far) / (1.0 / near - 1.0 / far)
    else:
        out[fg] = (far - visible) / (far - near)
    return _grey(out)


def camera_space_normals(normal_world: np.ndarray, camera_to_world: np.ndarray) -> np.ndarray:
    """World-space normals → camera space (X right, Y up, Z towards the viewer), unit length;
    zero where the input is zero (background)."""
    rotation = np.asarray(camera_to_world, dtype=np.float64)[:3, :3]
    # Row vectors: n_cam = Rᵀ n_world  ⇔  n_cam_row = n_world_row @ R.
    cam = np.asarray(normal_world, dtype=np.float64)[..., :3] @ rotation
    cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
    length = np.linalg.norm(cam, axis=-1, keepdims=True)
    return np.where(length > 1e-6, cam / np.maximum(length, 1e-12), 0.0)


# Sign of camera-space (x, y) in (red, green) per normal-map convention; blue is always +z.
NORMAL_CONVENTIONS = {
    # ControlNet 1.1 normalbae (and 1.0): "blue is front, red is left, green is top" — the
    # convention the ControlNet authors state; the default.
    "controlnet": (-1.0, 1.0),
    # DSINE's README: camera axes (right, down, front), outward normals, shown as (n + 1) / 2.
    "dsine": (1.0, -1.0),
}


def normal_map(
    normal_world: np.ndarray,
    camera_to_world: np.ndarray,
    *,
    foreground: np.ndarray | None = None,
    background: tuple[int, int, int] = FACING_VIEWER,
    convention: str = "controlnet",
) -> np.ndarray:
    """The Normal pass as a ControlNet normal map. Default convention, ControlNet 1.1 normalbae:
    camera-space n → R = (1 - x)/2 ("red is left"), G = (1 + y)/2 ("green is top"),
    B = (1 + z)/2 ("blue is front"), × 255, rounded; "dsine" flips red and green.

    Background (no surface, or outside `foreground`) gets `background`, by default the colour of a
    normal facing the viewer — what the normal estimators the models were trained on output for a
    flat backdrop (they never output black, which is no normal at all)."""
    if convention not in NORMAL_CONVENTIONS:
        raise ValueError(f"unknown normal-map convention {convention!r} (known: {', '.join(NORMAL_CONVENTIONS)})")
    sign_x, sign_y = NORMAL_CONVENTIONS[convention]
    cam = camera_space_normals(normal_world, camera_to_world)
    fg = np.linalg.norm(cam, axis=-1) > 0.5
    if foreground is not None:
        fg &= foreground
    rgb = np.stack([(1.0 + sign_x * cam[..., 0]) * 0.5, (1.0 + sign_y * cam[..., 1]) * 0.5, (1.0 + cam[..., 2]) * 0.5], axis=-1)
    out = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    out[~fg] = np.asarray(background, dtype=np.uint8)
    return out


def _indices(index: np.ndarray) -> np.ndarray:
    """An index pass (integer-valued floats) as int64; NaN/inf/negative count as 0 (background)."""
    values = np.nan_to_num(np.asarray(index, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.maximum(np.rint(values), 0).astype(np.int64)


def index_mask(index: np.ndarray, ids: Iterable[int]) -> np.ndarray:
    """Boolean mask, True exactly where the index pass holds one of `ids`."""
    wanted = np.fromiter((int(i) for i in ids), dtype=np.int64)
    return np.isin(_indices(index), wanted[wanted > 0])


def ade20k_class(value: int) -> int:
    """Any positive index as an ADE20K class number 1..150 (wrapping past 150); 0 stays 0."""
    return 0 if value <= 0 else (value - 1) % ade20k.NUM_CLASSES + 1


# Classes with a colour no earlier class has (ADE20K's palette gives road and skyscraper the same
# grey): the ones handed out to unlabelled objects, so each gets a colour of its own.
_DISTINCT_CLASSES = tuple(
    k for k in range(1, ade20k.NUM_CLASSES + 1)
    if not any((ade20k.PALETTE[j] == ade20k.PALETTE[k]).all() for j in range(1, k))
)


def segmentation_classes(labels: Mapping[int, int]) -> dict[int, int]:
    """Index → ADE20K class for a segmentation map. `labels` maps each index in the pass to the
    artist's label for it (an object's or material's own Pass Index, read as an ADE20K class
    number; 0 = unlabelled). Labelled indices keep their class (several objects may share one);
    unlabelled ones get distinct classes not used by any label, in index order, so every
    unlabelled object is a region of its own colour (cycling once the palette runs out)."""
    classes = {i: ade20k_class(label) for i, label in labels.items() if label > 0 and i > 0}
    used = {tuple(ade20k.PALETTE[c]) for c in classes.values()}
    free = [c for c in _DISTINCT_CLASSES if tuple(ade20k.PALETTE[c]) not in used] or list(_DISTINCT_CLASSES)
    unlabelled = sorted(i for i, label in labels.items() if label <= 0 and i > 0)
    for n, i in enumerate(unlabelled):
        classes[i] = free[n % len(free)]
    return classes


def segmentation_map(index: np.ndarray, classes: Mapping[int, int] | None = None) -> np.ndarray:
    """An index pass as an ADE20K-coloured segmentation map. `classes` maps index → class number
    (see `segmentation_classes`); indices it does not name use their own value as the class.
    Index 0 (background) is black."""
    ids = _indices(index)
    # Pass indices are at most 32767 in Blender: a lookup table over every value is small.
    values = np.arange(int(ids.max(initial=0)) + 1)
    rows = np.where(values == 0, 0, (values - 1) % ade20k.NUM_CLASSES + 1)
    for i, cls in (classes or {}).items():
        if 0 < i < len(rows):
            rows[i] = ade20k_class(int(cls))
    return ade20k.PALETTE[rows[ids]]


def _dilate(mask: np.ndarray, width: int) -> np.ndarray:
    """Grow a 1-pixel line to `width` pixels with a width × width square (separable max filter)."""
    if width <= 1:
        return mask
    lo, hi = -((width - 1) // 2), width // 2
    out = mask
    for axis in (0, 1):
        grown = np.zeros_like(out)
        n = out.shape[axis]
        for shift in range(lo, hi + 1):
            src = [slice(None), slice(None)]
            dst = [slice(None), slice(None)]
            src[axis] = slice(max(0, -shift), n - max(0, shift))
            dst[axis] = slice(max(0, shift), n - max(0, -shift))
            grown[tuple(dst)] |= out[tuple(src)]
        out = grown
    return out


def edge_map(
    *,
    object_index: np.ndarray | None = None,
    material_index: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    normal: np.ndarray | None = None,
    width: int = 1,
    depth_step: float = 0.05,
    crease_angle: float = 60.0,
) -> np.ndarray:
    """Line art from the exact passes: white lines on black (the canny / lineart / softedge / mlsd
    ControlNet convention), `width` pixels wide. A line runs between two neighbouring pixels that
    show different objects or materials, whose depths differ by more than `depth_step` times the
    nearer one (an occlusion), or whose normals differ by more than `crease_angle` degrees.
    The line is drawn on the nearer of the two pixels (on the object's side of its silhouette;
    without depth, on the surface rather than the background, else on the right / lower one).
    Any pass may be omitted; at least one is needed."""
    given = [a for a in (object_index, material_index, depth, normal) if a is not None]
    if not given:
        raise ValueError("edge_map needs at least one pass")
    shape = given[0].shape[:2]
    if any(a.shape[:2] != shape for a in given):
        raise ValueError("edge_map passes differ in size")
    if width < 1:
        raise ValueError("edge width must be at least 1 pixel")
    # "Nearness" of each pixel: its depth, or without depth 0 on a surface and inf on background,
    # so a line between two pixels is drawn on the nearer (the object's) side.
    surface = np.zeros(shape, bool)
    for index in (object_index, material_index):
        if index is not None:
            surface |= _indices(index) > 0
    unit = None
    if normal is not None:
        n = np.nan_to_num(np.asarray(normal, dtype=np.float64)[..., :3])
        length = np.linalg.norm(n, axis=-1, keepdims=True)
        unit = np.where(length > 1e-6, n / np.maximum(length, 1e-12), 0.0)
        has_normal = length[..., 0] > 0.5
        surface |= has_normal
    if depth is not None:
        d = np.asarray(depth, dtype=np.float64)
        rank = np.where(depth_foreground(d), d, np.inf)
    else:
        rank = np.where(surface, 0.0, np.inf)
    cos_crease = np.cos(np.radians(crease_angle))
    lines = np.zeros(shape, bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        edge = np.zeros(lines[a].shape, bool)
        for index in (object_index, material_index):
            if index is not None:
                ids = _indices(index)
                edge |= ids[a] != ids[b]
        if depth is not None:
            # inf - inf (background both sides) is NaN and compares False: no line there.
            with np.errstate(invalid="ignore"):
                edge |= np.abs(rank[a] - rank[b]) > depth_step * np.minimum(rank[a], rank[b])
        if unit is not None:
            both = has_normal[a] & has_normal[b]
            edge |= both & (np.sum(unit[a] * unit[b], axis=-1) < cos_crease)
        on_a = rank[a] < rank[b]
        lines[a] |= edge & on_a
        lines[b] |= edge & ~on_a
    return _grey(_dilate(lines, width).astype(np.float64))


def color_rgb8(color: np.ndarray) -> np.ndarray:
    """The colour pass (display-referred floats 0..1, RGBA) as uint8 RGB for an img2img upload."""
    return (np.clip(np.asarray(color)[..., :3], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def build_maps(
    passes: PassSet,
    kinds: Iterable[str],
    *,
    segmentation_source: str = "object",
    edge_width: int = 1,
    depth_step: float = 0.05,
    crease_angle: float = 60.0,
    normal_convention: str = "controlnet",
) -> dict[str, np.ndarray]:
    """Every requested control map from one PassSet (off the main thread is fine)."""
    maps: dict[str, np.ndarray] = {}
    for kind in kinds:
        if kind == "depth":
            maps[kind] = depth_map(passes.get("depth"))
        elif kind == "normal":
            maps[kind] = normal_map(passes.get("normal"), passes.camera_to_world, convention=normal_convention)
        elif kind == "segmentation":
            index_kind = _index_pass(segmentation_source)
            labels = passes.object_labels if segmentation_source == "object" else passes.material_labels
            maps[kind] = segmentation_map(passes.get(index_kind), segmentation_classes(labels))
        elif kind == "edges":
            maps[kind] = edge_map(
                object_index=passes.arrays.get("object_index"),
                material_index=passes.arrays.get("material_index"),
                depth=passes.arrays.get("depth"),
                normal=passes.arrays.get("normal"),
                width=edge_width,
                depth_step=depth_step,
                crease_angle=crease_angle,
            )
        else:
            raise ValueError(f"unknown control map kind {kind!r} (known: {', '.join(MAP_KINDS)})")
    return maps
