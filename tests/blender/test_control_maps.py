"""control_maps on synthetic arrays (no bpy): depth, normal, segmentation, masks and edges in the
ControlNet conventions, including the awkward inputs (infinite far plane, NaN, one depth)."""

from __future__ import annotations

import numpy as np
import pytest

import lb_blender

cm = lb_blender.source_module("control_maps")
ade20k = lb_blender.source_module("ade20k")

BG = 1e10  # what Cycles writes where no surface was hit


def _rot_x(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _rot_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


# ---------------------------------------------------------------------------------------- depth

def test_depth_single_depth_scene_is_white_on_black():
    depth = np.full((6, 8), BG)
    depth[1:5, 2:6] = 5.0
    out = cm.depth_map(depth)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    assert (out[1:5, 2:6] == 255).all()
    out[1:5, 2:6] = 0
    assert (out == 0).all()


def test_depth_is_linear_near_white_far_black():
    depth = np.tile(np.linspace(2.0, 12.0, 11), (3, 1))
    out = cm.depth_map(depth)[..., 0].astype(int)
    expected = np.floor((12.0 - depth) / 10.0 * 255.0 + 0.5).astype(int)  # rounded half up
    assert (out == expected).all()
    assert out[0, 0] == 255 and out[0, -1] == 0


def test_depth_background_of_every_kind_is_black_and_ignored_for_the_range():
    depth = np.array([[np.inf, np.nan, -np.inf, 0.0, -3.0, BG, 1e30, 4.0, 6.0]])
    out = cm.depth_map(depth)[0, :, 0]
    assert out.tolist() == [0, 0, 0, 0, 0, 0, 0, 255, 0]


def test_depth_foreground_mask_and_all_background():
    depth = np.array([[3.0, 4.0, 5.0]])
    out = cm.depth_map(depth, foreground=np.array([[True, True, False]]))[0, :, 0]
    assert out.tolist() == [255, 0, 0]
    assert (cm.depth_map(np.full((4, 4), np.inf)) == 0).all()


def test_depth_percentiles_clip_outliers():
    depth = np.concatenate([np.linspace(1.0, 2.0, 98), [50.0, 100.0]])[None, :]
    plain = cm.depth_map(depth)[0, :, 0]
    robust = cm.depth_map(depth, far_percentile=97)[0, :, 0]
    assert plain[97] > 240  # the two outliers squash the real range into the top few values
    assert robust[97] < 5 and robust[0] == 255 and (robust[98:] == 0).all()


def test_depth_inverse_is_disparity():
    depth = np.array([[1.0, 2.0, 4.0]])
    out = cm.depth_map(depth, inverse=True)[0, :, 0].astype(int)
    # 1/d: 1, .5, .25 → (x - .25) / .75: 1, 1/3, 0
    assert out.tolist() == [255, 85, 0]


# ---------------------------------------------------------------------------------------- normal

CAMERA_NORMAL_COLOURS = {  # camera-space normal → ControlNet colour (red left, green up, blue front)
    (0, 0, 1): (128, 128, 255),
    (-1, 0, 0): (255, 128, 128),
    (1, 0, 0): (0, 128, 128),
    (0, 1, 0): (128, 255, 128),
    (0, -1, 0): (128, 0, 128),
}


@pytest.mark.parametrize("camera_to_world", [np.eye(3), _rot_z(45) @ _rot_x(54.7356), _rot_z(-130) @ _rot_x(20)])
def test_normal_colours_follow_the_controlnet_convention(camera_to_world):
    cam = np.array(list(CAMERA_NORMAL_COLOURS), dtype=float)
    world = cam @ camera_to_world.T  # n_world = R n_cam
    out = cm.normal_map(world[None, :, :], camera_to_world)
    assert out[0].tolist() == [list(c) for c in CAMERA_NORMAL_COLOURS.values()]


def test_normal_dsine_convention_flips_red_and_green():
    cam = np.array([[-1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    out = cm.normal_map(cam[None], np.eye(3), convention="dsine")
    assert out[0].tolist() == [[0, 128, 128], [128, 0, 128], [128, 128, 255]]
    with pytest.raises(ValueError, match="convention"):
        cm.normal_map(cam[None], np.eye(3), convention="opengl")


def test_normal_oblique_within_one_level():
    n = np.array([0.3, -0.4, np.sqrt(1 - 0.25)])
    out = cm.normal_map(n[None, None, :], np.eye(3))[0, 0].astype(float)
    expected = np.array([(1 - n[0]) / 2, (1 + n[1]) / 2, (1 + n[2]) / 2]) * 255
    assert np.abs(out - expected).max() <= 0.5 + 1e-9


def test_normal_background_and_bad_values():
    normals = np.array([[[0, 0, 0], [np.nan, 0, 0], [0, 0, 2.0]]])
    out = cm.normal_map(normals, np.eye(3))
    assert out[0].tolist() == [list(cm.FACING_VIEWER), list(cm.FACING_VIEWER), [128, 128, 255]]
    black = cm.normal_map(normals, np.eye(3), background=(0, 0, 0))
    assert black[0, 0].tolist() == [0, 0, 0] and black[0, 2].tolist() == [128, 128, 255]


def test_camera_space_normals_are_unit_and_rotated():
    r = _rot_z(90)  # camera X = world Y
    out = cm.camera_space_normals(np.array([[0.0, 3.0, 0.0]]), r)
    assert np.allclose(out, [[1.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------- segmentation

def test_palette_is_ade20k_with_black_background():
    assert ade20k.PALETTE.shape == (151, 3) and len(ade20k.CLASSES) == 150
    assert ade20k.PALETTE[0].tolist() == [0, 0, 0]
    known = {1: (120, 120, 120), 2: (180, 120, 120), 3: (6, 230, 230), 13: (150, 5, 61), 150: (92, 0, 255)}
    for k, colour in known.items():
        assert tuple(ade20k.PALETTE[k]) == colour
    assert ade20k.CLASSES[0] == "wall" and ade20k.CLASSES[2] == "sky" and ade20k.CLASSES[-1] == "flag"


def test_segmentation_map_uses_index_as_class_and_black_background():
    index = np.array([[0.0, 1.0, 3.0, 151.0, np.nan, 2.0000001]])
    out = cm.segmentation_map(index)
    assert out[0].tolist() == [[0, 0, 0], [120, 120, 120], [6, 230, 230], [120, 120, 120], [0, 0, 0], [180, 120, 120]]


def test_segmentation_map_with_classes():
    index = np.array([[1.0, 2.0, 3.0]])
    out = cm.segmentation_map(index, {1: 3, 2: 13})
    assert out[0].tolist() == [[6, 230, 230], [150, 5, 61], [6, 230, 230]]


def test_segmentation_classes_keep_labels_and_give_unlabelled_distinct_colours():
    labels = {1: 3, 2: 0, 3: 3, 4: 0, 5: 1}
    classes = cm.segmentation_classes(labels)
    assert classes[1] == classes[3] == 3 and classes[5] == 1
    colours = {i: tuple(ade20k.PALETTE[c]) for i, c in classes.items()}
    assert len({colours[2], colours[4], colours[1], colours[5]}) == 4  # all different


def test_segmentation_classes_cycle_past_the_palette():
    classes = cm.segmentation_classes({i: 0 for i in range(1, 400)})
    assert set(classes) == set(range(1, 400))
    first = [tuple(ade20k.PALETTE[classes[i]]) for i in range(1, 150)]
    assert len(set(first)) == 149  # every colour distinct until the distinct classes run out


def test_index_mask_is_exact():
    index = np.array([[0.0, 1.0, 2.0], [3.0, 2.0, np.nan]])
    assert cm.index_mask(index, [2, 3]).tolist() == [[False, False, True], [True, True, False]]
    assert not cm.index_mask(index, [0]).any()  # background is never "selected"
    assert not cm.index_mask(index, []).any()


# ------------------------------------------------------------------------------------------ edges

def _square(size=12, lo=3, hi=9):
    index = np.zeros((size, size))
    index[lo:hi, lo:hi] = 1
    return index


def _ring(mask):
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def test_edges_outline_an_object_on_its_own_side():
    index = _square()
    lines = cm.edge_map(object_index=index)[..., 0] > 0
    assert (lines == _ring(index > 0)).all()
    depth = np.where(index > 0, 5.0, BG)
    assert ((cm.edge_map(depth=depth)[..., 0] > 0) == _ring(index > 0)).all()


def test_edges_width():
    index = _square(20, 6, 14)
    lines = cm.edge_map(object_index=index, width=3)[..., 0] > 0
    ring = _ring(index > 0)
    assert lines[ring].all() and lines.sum() > 2 * ring.sum()
    assert not lines[9:11, 9:11].any() and not lines[0].any()  # centre and far border stay black
    assert (cm.edge_map(object_index=index, width=3)[..., 0] > 0).sum() > (cm.edge_map(object_index=index, width=2)[..., 0] > 0).sum()


def test_edges_from_depth_step_and_normal_crease_not_from_smooth_slopes():
    depth = np.tile(np.linspace(4.0, 6.0, 16), (16, 1))  # a tilted plane: smooth, no edge
    assert not cm.edge_map(depth=depth).any()
    stepped = depth.copy()
    stepped[:, 8:] += 3.0  # an occlusion: the near side (left) gets the line
    lines = cm.edge_map(depth=stepped)[..., 0] > 0
    assert lines[:, 7].all() and lines.sum() == 16
    normals = np.zeros((16, 16, 3))
    normals[:, :8] = (0, 0, 1)
    normals[:, 8:] = (1, 0, 0)  # a 90° crease
    assert (cm.edge_map(normal=normals, crease_angle=60)[..., 0] > 0)[:, 7:9].any(axis=1).all()
    assert not cm.edge_map(normal=normals, crease_angle=95).any()


def test_edges_between_materials_and_argument_errors():
    material = np.ones((8, 8))
    material[:, 4:] = 2
    assert (cm.edge_map(material_index=material)[..., 0] > 0).sum() == 8
    with pytest.raises(ValueError):
        cm.edge_map()
    with pytest.raises(ValueError):
        cm.edge_map(object_index=np.zeros((4, 4)), depth=np.zeros((5, 5)))
    with pytest.raises(ValueError):
        cm.edge_map(object_index=np.zeros((4, 4)), width=0)


# ---------------------------------------------------------------------------------- the whole set

def _pass_set():
    index = _square()
    return cm.PassSet(
        width=12,
        height=12,
        arrays={
            "depth": np.where(index > 0, 5.0, BG).astype(np.float32),
            "normal": np.where(index[..., None] > 0, np.array([0.0, 0.0, 1.0]), 0.0).astype(np.float32),
            "object_index": index.astype(np.float32),
            "material_index": index.astype(np.float32),
            "color": np.full((12, 12, 4), 0.5, np.float32),
        },
        camera_to_world=np.eye(3),
        object_ids={"Cube": 1},
        object_labels={1: 0},
    )


def test_build_maps_and_passes_for():
    passes = _pass_set()
    assert cm.passes_for(["depth", "normal"]) == {"depth", "normal"}
    assert cm.passes_for(["segmentation"], "material") == {"material_index"}
    assert cm.passes_for(["edges"]) == {"depth", "normal", "object_index", "material_index"}
    maps = cm.build_maps(passes, cm.MAP_KINDS)
    assert set(maps) == set(cm.MAP_KINDS)
    assert all(m.shape == (12, 12, 3) and m.dtype == np.uint8 for m in maps.values())
    assert maps["depth"][5, 5].tolist() == [255] * 3 and maps["normal"][5, 5].tolist() == [128, 128, 255]
    assert maps["segmentation"][0, 0].tolist() == [0, 0, 0] and maps["segmentation"][5, 5].tolist() != [0, 0, 0]
    assert passes.object_mask(["Cube"]).sum() == 36 and not passes.object_mask(["Missing"]).any()
    assert cm.color_rgb8(passes.arrays["color"])[0, 0].tolist() == [128, 128, 128]
    with pytest.raises(ValueError):
        cm.build_maps(passes, ["canny"])
    with pytest.raises(ValueError):
        cm.passes_for(["segmentation"], "scene")
    with pytest.raises(KeyError, match="not rendered"):
        cm.PassSet(1, 1, {}, np.eye(3)).get("depth")
