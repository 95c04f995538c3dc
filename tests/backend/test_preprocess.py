"""Preprocessors: edge/line maps (OpenCV), depth and normal maps (a transformers depth estimator),
their conventions, sizes, determinism, the estimator's loading rules and typed errors.

The depth estimator is the built-in random `tiny-depth`; where a test needs a known depth, it
replaces the model's forward with a known disparity at the processor's resolution, so the real
processor and post-processing (resize back to the image) still run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.modeling_outputs import DepthEstimatorOutput

from latentbridge.engine import tiny_estimators
from latentbridge.engine.estimators import EstimatorCache, resolve_estimator
from latentbridge.engine.preprocess import (
    PREPROCESSORS,
    available,
    describe_all,
    encode_normals,
    normals_from_depth,
    parse_options,
    preprocess,
)
from latentbridge.protocol import ErrorCode, LatentBridgeError
from latentbridge.settings import Settings

FIELD = "controls.0.preprocessor"
FACING = (128, 128, 255)  # the normal colour of a surface facing the viewer


@pytest.fixture(scope="module")
def estimators() -> EstimatorCache:
    """Both kinds: the tests that run every preprocessor run `segmentation` too (its own tests are in
    test_preprocess_segmentation.py)."""
    return EstimatorCache(Settings(depth_estimator="tiny-depth", segmentation_estimator="tiny-segmentation"))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return tiny_estimators.save(tmp_path_factory.mktemp("estimators") / "tiny-depth-saved")


def square_image(size=64, box=(16, 16, 48, 48), background=0, square=255) -> Image.Image:
    pixels = np.full((size, size, 3), background, np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = square
    return Image.fromarray(pixels, "RGB")


def line_drawing(size=64) -> Image.Image:
    """A black vertical line, 3 px wide, on white."""
    pixels = np.full((size, size, 3), 255, np.uint8)
    pixels[:, 30:33] = 0
    return Image.fromarray(pixels, "RGB")


def picture(width=96, height=64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), ((x // 8 + y // 8) % 2) * 255], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def array(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


def known_disparity(monkeypatch, estimators, make):
    """Make the estimator's model output `make(height, width)` (at the processor's size)."""
    model = estimators.get().model

    def forward(pixel_values, **kwargs):
        height, width = pixel_values.shape[-2:]
        return DepthEstimatorOutput(predicted_depth=torch.from_numpy(make(height, width)).float()[None])

    monkeypatch.setattr(model, "forward", forward)


# --------------------------------------------------------------------------------------------
# Edges and lines


def test_canny_finds_the_edges_of_a_square_and_nothing_else():
    edges = array(preprocess("canny", square_image()))[:, :, 0]
    ys, xs = np.nonzero(edges)
    assert set(np.unique(edges)) == {0, 255}
    # Every edge pixel lies on the square's outline (within a pixel), and every side has edges.
    on_outline = (np.minimum(np.abs(xs - 16), np.abs(xs - 47)) <= 1) | (np.minimum(np.abs(ys - 16), np.abs(ys - 47)) <= 1)
    inside_box = (xs >= 14) & (xs <= 49) & (ys >= 14) & (ys <= 49)
    assert (on_outline & inside_box).all()
    for side in (np.abs(xs - 16) <= 1, np.abs(xs - 47) <= 1, np.abs(ys - 16) <= 1, np.abs(ys - 47) <= 1):
        assert side.sum() >= 25
    assert edges[24:40, 24:40].max() == 0 and edges[:10].max() == 0


def test_canny_on_a_flat_image_has_no_edges():
    assert array(preprocess("canny", Image.new("RGB", (64, 64), (90, 140, 200)))).max() == 0


def test_canny_thresholds_are_used_and_default_to_webui_values():
    faint = square_image(background=100, square=110)  # a step of 10 grey levels
    assert array(preprocess("canny", faint)).max() == 0  # defaults 100/200 ignore it
    assert array(preprocess("canny", faint, options={"low": 5, "high": 10})).max() == 255
    # The wire sends options as numbers (JSON floats): whole floats are the integers they name.
    assert parse_options("canny", {"low": 50.0, "high": 150.0}).low == 50
    defaults = parse_options("canny")
    assert (defaults.low, defaults.high) == (100, 200)


def test_invert_turns_a_drawing_into_white_lines_on_black():
    inverted = array(preprocess("invert", line_drawing()))
    assert (inverted[:, 30:33] == 255).all() and inverted[:, :29].max() == 0


@pytest.mark.parametrize("name", ["scribble_xdog", "lineart_standard"])
def test_line_extractors_mark_the_dark_line_white_on_black(name):
    lines = array(preprocess(name, line_drawing()))[:, :, 0]
    assert lines[:, 30:33].min() > 100  # the line
    assert lines[:, :20].max() == 0 and lines[:, 45:].max() == 0  # far from it
    assert array(preprocess(name, Image.new("RGB", (64, 64), (128, 128, 128)))).max() == 0


def test_none_gives_the_image_as_rgb():
    rgba = Image.new("RGBA", (20, 10), (10, 20, 30, 0))
    assert preprocess("none", rgba).mode == "RGB"
    assert array(preprocess("none", rgba))[0, 0].tolist() == [10, 20, 30]
    grey = Image.new("L", (20, 10), 77)
    assert array(preprocess("none", grey))[0, 0].tolist() == [77, 77, 77]


def test_detectors_see_transparent_parts_as_white():
    drawing = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent black...
    drawing.paste((0, 0, 0, 255), (30, 0, 33, 64))  # ...with an opaque black line
    assert np.array_equal(array(preprocess("invert", drawing)), array(preprocess("invert", line_drawing())))


# --------------------------------------------------------------------------------------------
# Depth


def test_depth_is_near_white_far_black_normalised(monkeypatch, estimators):
    # Disparity grows to the right: the right side is nearer.
    known_disparity(monkeypatch, estimators, lambda h, w: np.tile(np.linspace(1.0, 5.0, w), (h, 1)))
    depth = array(preprocess("depth", picture(), estimators=estimators))
    assert (depth[:, :, 0] == depth[:, :, 1]).all() and (depth[:, :, 0] == depth[:, :, 2]).all()
    row = depth[32, :, 0]
    assert row[:3].max() <= 5 and row[-3:].min() >= 250
    assert depth.min() == 0 and depth.max() == 255
    assert (np.diff(row) >= 0).all()


def test_metric_depth_is_inverted_into_the_same_convention(monkeypatch, tmp_path):
    folder = tiny_estimators.save(tmp_path / "metric", depth_estimation_type="metric")
    cache = EstimatorCache(Settings(depth_estimator=str(folder)))
    assert not cache.get().outputs_disparity
    # Metric depth grows to the right (metres): the right side is farther, so it must be darker.
    known_disparity(monkeypatch, cache, lambda h, w: np.tile(np.linspace(1.0, 10.0, w), (h, 1)))
    row = array(preprocess("depth", picture(), estimators=cache))[32, :, 0]
    assert row[0] >= 250 and row[-3:].max() <= 5
    assert (np.diff(row) <= 0).all()


def test_depth_from_the_tiny_estimator_end_to_end(estimators):
    image = picture(96, 64)
    first = preprocess("depth", image, estimators=estimators)
    assert first.size == (96, 64) and first.mode == "RGB"
    pixels = array(first)
    assert pixels.min() == 0 and pixels.max() == 255  # normalised over the image
    assert len(np.unique(pixels)) > 50  # a map, not a flat or two-level image
    assert np.array_equal(pixels, array(preprocess("depth", image, estimators=estimators)))
    # A second process builds the same estimator: same map.
    assert np.array_equal(pixels, array(preprocess("depth", image, estimators=EstimatorCache(Settings(depth_estimator="tiny-depth")))))


# --------------------------------------------------------------------------------------------
# Normals


def test_encode_normals_follows_controlnet_11_colours():
    # camera space: x right, y up, z towards the viewer → "blue is front, red is left, green is top"
    normals = np.array([[[0, 0, 1], [-1, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0]]], np.float32)
    assert encode_normals(normals)[0].tolist() == [list(FACING), [255, 128, 128], [0, 128, 128], [128, 255, 128], [128, 0, 128]]


def ramp(direction: str, size: int = 64) -> np.ndarray:
    """Disparity (larger = nearer) of a plane tilted so that the named side is nearest."""
    line = np.linspace(0.0, 1.0, size, dtype=np.float32)
    return {"right": np.tile(line, (size, 1)), "left": np.tile(line[::-1], (size, 1)),
            "bottom": np.tile(line[:, None], (1, size)), "top": np.tile(line[::-1, None], (1, size))}[direction]


@pytest.mark.parametrize("nearest, channel, sign", [
    ("right", 0, +1),  # right side nearer: the plane faces left → more red
    ("left", 0, -1),  # faces right → less red
    ("bottom", 1, +1),  # bottom nearer (a floor): faces up → more green
    ("top", 1, -1),  # a ceiling: faces down → less green
])
def test_normals_of_tilted_planes(nearest, channel, sign):
    colours = encode_normals(normals_from_depth(ramp(nearest), background_threshold=0.0)).astype(np.int32)
    centre = colours[8:-8, 8:-8].reshape(-1, 3)
    other = 1 - channel
    assert (sign * (centre[:, channel] - 128) > 60).all()
    assert (np.abs(centre[:, other] - 128) <= 1).all()
    assert (centre[:, 2] > 128).all()  # still facing the camera
    # strength 1: a ramp over the whole depth range across the image tilts 45° → 128 ± 127.5/√2.
    assert np.abs(np.abs(centre[:, channel] - 127.5) - 127.5 / np.sqrt(2)).max() <= 3


def test_normals_of_a_sphere_match_its_exact_normals():
    # A hemisphere of radius N/2 pixels as a height field: strength 0.5 × N makes the relief exact.
    size = 129
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    z = np.sqrt(np.clip(1 - x * x - y * y, 0, 1))
    estimated = encode_normals(normals_from_depth(z.astype(np.float32), strength=0.5, background_threshold=0.0))
    exact = encode_normals(np.stack([x, -y, z], axis=-1))  # image y runs down; camera y up
    inner = x * x + y * y < 0.7 ** 2
    assert np.abs(estimated.astype(np.int32) - exact)[inner].max() <= 2


def test_flat_depth_faces_the_viewer_and_background_is_flattened():
    flat = encode_normals(normals_from_depth(np.full((32, 48), 3.0, np.float32)))
    assert (flat.reshape(-1, 3) == FACING).all()
    half = encode_normals(normals_from_depth(ramp("right"), background_threshold=0.5)).astype(np.int32)
    assert (half[:, :28].reshape(-1, 3) == FACING).all()  # farther than half the range: background
    assert (half[8:-8, 40:-8, 0] > 200).all()


def test_normal_preprocessor_end_to_end(monkeypatch, estimators):
    known_disparity(monkeypatch, estimators, lambda h, w: np.tile(np.linspace(0.0, 1.0, h)[:, None], (1, w)))
    normal = preprocess("normal", picture(96, 64), options={"background_threshold": 0}, estimators=estimators)
    assert normal.size == (96, 64)
    centre = array(normal)[16:-16, 16:-16].reshape(-1, 3)
    assert (centre[:, 1] > 200).all() and (np.abs(centre[:, 0] - 128) <= 2).all()  # a floor: faces up


# --------------------------------------------------------------------------------------------
# Every preprocessor: size, mode, determinism


@pytest.mark.parametrize("name", list(PREPROCESSORS))
def test_every_preprocessor_keeps_the_size_and_is_deterministic(name, estimators):
    image = picture(70, 45)
    first = preprocess(name, image, estimators=estimators)
    assert first.mode == "RGB" and first.size == (70, 45)
    assert np.array_equal(array(first), array(preprocess(name, image, estimators=estimators)))


def test_registry_describes_names_and_options_for_capabilities():
    described = describe_all()
    json.dumps(described)
    by_name = {entry["name"]: entry for entry in described}
    assert {"none", "canny", "depth", "normal"} <= set(by_name)
    assert by_name["canny"]["options"]["properties"]["low"]["default"] == 100
    assert by_name["depth"]["needs_estimator"] and not by_name["canny"]["needs_estimator"]
    assert "depth" not in available(Settings()) and "canny" in available(Settings())
    assert {"depth", "normal"} <= set(available(Settings(depth_estimator="tiny-depth")))


# --------------------------------------------------------------------------------------------
# Estimators: sources, the folder round trip, cache, safety


def test_tiny_estimator_is_the_same_every_build():
    first, _ = tiny_estimators.build()
    second, _ = tiny_estimators.build()
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_tiny_estimator_folder_round_trip(tiny_folder, estimators):
    assert {"config.json", "preprocessor_config.json", "model.safetensors"} <= {p.name for p in tiny_folder.iterdir()}
    assert resolve_estimator(str(tiny_folder)).kind == "folder"
    loaded = EstimatorCache(Settings(depth_estimator=str(tiny_folder))).get()
    assert type(loaded.model).__name__ == "DepthAnythingForDepthEstimation"
    image = picture()
    assert np.array_equal(loaded.disparity(image), estimators.get().disparity(image))


def test_cache_loads_once_and_stays_bounded(tiny_folder):
    cache = EstimatorCache(Settings(depth_estimator="tiny-depth"), capacity=1)
    first = cache.get()
    assert cache.get() is first
    cache.get(str(tiny_folder))
    assert cache.loaded() == [str(tiny_folder)]
    assert cache.get() is not first  # evicted, loaded again


def _error(call) -> LatentBridgeError:
    with pytest.raises(LatentBridgeError) as info:
        call()
    return info.value


def test_pickle_weights_need_the_opt_in(tiny_folder, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((tiny_folder / name).read_bytes())
    model, _ = tiny_estimators.build()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    err = _error(lambda: preprocess("depth", picture(), estimators=EstimatorCache(Settings(depth_estimator=str(folder))), field=FIELD))
    assert err.code == ErrorCode.unsupported and err.field == FIELD and "--allow-pickle" in err.message
    allowed = EstimatorCache(Settings(depth_estimator=str(folder), allow_pickle=True)).get()
    assert np.array_equal(allowed.disparity(picture()), EstimatorCache(Settings(depth_estimator="tiny-depth")).get().disparity(picture()))


def test_corrupt_weights_are_a_load_failure(tiny_folder, tmp_path):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    for path in tiny_folder.iterdir():
        data = path.read_bytes()
        (folder / path.name).write_bytes(data[:100] if path.suffix == ".safetensors" else data)
    err = _error(lambda: EstimatorCache(Settings(depth_estimator=str(folder))).get(field=FIELD))
    assert err.code == ErrorCode.model_load_failed and err.field == FIELD and "corrupt" in err.message


def test_a_model_that_is_not_a_depth_estimator_is_a_load_failure(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path / "backbone-only"
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    err = _error(lambda: EstimatorCache(Settings(depth_estimator=str(folder))).get(field=FIELD))
    assert err.code == ErrorCode.model_load_failed and err.field == FIELD and "tiny-depth" in err.message


@pytest.mark.parametrize("name, code, words", [
    ("owner/not-cached", ErrorCode.unknown_model, "downloads are off"),  # the suite runs with HF_HUB_OFFLINE=1
    ("./no-such-folder", ErrorCode.unknown_model, "no such folder"),
    ("not a name", ErrorCode.unknown_model, "unknown depth estimator"),
])
def test_estimator_names_that_cannot_be_had(name, code, words):
    err = _error(lambda: preprocess("normal", picture(), estimators=EstimatorCache(Settings(depth_estimator=name)), field=FIELD))
    assert (err.code, err.field) == (code, FIELD) and words in err.message and "--depth-estimator" in err.message


def test_hub_ids_are_fetched_then_loaded_as_folders(monkeypatch, tiny_folder):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns, local_files_only):
        calls.append((repo_id, allow_patterns, local_files_only))
        return str(tiny_folder)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = EstimatorCache(Settings(depth_estimator="owner/depth-model")).get()
    assert type(loaded.model).__name__ == "DepthAnythingForDepthEstimation"
    repo_id, patterns, offline = calls[0]
    assert repo_id == "owner/depth-model" and not offline
    assert "*.safetensors" in patterns and not any(p.endswith((".bin", ".pt", ".pth", ".ckpt")) for p in patterns)
    EstimatorCache(Settings(depth_estimator="owner/depth-model", allow_pickle=True)).get()
    assert "*.bin" in calls[1][1]


def test_a_hub_that_cannot_be_reached_says_so(monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    err = _error(lambda: EstimatorCache(Settings(depth_estimator="owner/depth-model")).get(field=FIELD))
    assert err.code == ErrorCode.unknown_model and err.field == FIELD
    assert "could not be reached" in err.message and "tiny-depth" in err.message


def test_folder_without_config_is_refused(tmp_path):
    err = _error(lambda: resolve_estimator(str(tmp_path), field=FIELD))
    assert err.code == ErrorCode.unknown_model and "config.json" in err.message


# --------------------------------------------------------------------------------------------
# Typed errors of the entry point


def test_depth_without_an_estimator_says_which_setting_to_pass():
    for estimators in (None, EstimatorCache(Settings())):
        err = _error(lambda: preprocess("depth", picture(), estimators=estimators, field=FIELD))
        assert err.code == ErrorCode.unsupported and err.field == FIELD and "--depth-estimator" in err.message


def test_unknown_preprocessor_names_the_field():
    err = _error(lambda: preprocess("lineart", picture(), field=FIELD))
    assert err.code == ErrorCode.invalid_request and err.field == FIELD and "canny" in err.message


@pytest.mark.parametrize("options, field", [
    ({"lo": 3}, f"{FIELD}_options.lo"),
    ({"low": -1}, f"{FIELD}_options.low"),
    ({"low": 50.5}, f"{FIELD}_options.low"),
    ({"low": 250, "high": 200}, f"{FIELD}_options"),
    ([1, 2], f"{FIELD}_options"),
])
def test_bad_options_name_the_option(options, field):
    err = _error(lambda: preprocess("canny", picture(), options=options, field=FIELD))
    assert err.code == ErrorCode.invalid_request and err.field == field


@pytest.mark.parametrize("image", [None, b"\x89PNG", Image.new("RGB", (0, 0))])
def test_bad_images_are_typed(image):
    err = _error(lambda: preprocess("canny", image, field=FIELD))
    assert err.code == ErrorCode.bad_image and err.field == FIELD


def test_an_image_the_estimator_cannot_resize_is_a_bad_image(estimators):
    # 3000x20 resizes to 112 x 0.7 px: the processor refuses it.
    err = _error(lambda: preprocess("depth", Image.new("RGB", (3000, 20)), estimators=estimators, field=FIELD))
    assert err.code == ErrorCode.bad_image and err.field == FIELD and "3000x20" in err.message


@pytest.mark.parametrize("name", list(PREPROCESSORS))
def test_a_single_pixel_image_works(name, estimators):
    assert preprocess(name, Image.new("RGB", (1, 1), (10, 200, 30)), estimators=estimators).size == (1, 1)
