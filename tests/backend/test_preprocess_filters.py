"""The model-free filters among the preprocessors (tile, blur, threshold, binary, colour grid,
shuffle, recolor): exact results on small synthetic images, against OpenCV where the extension
calls OpenCV, their option ranges and the seed rule of shuffle."""

import cv2
import numpy as np
import pytest
from PIL import Image

from latentbridge.engine.preprocess import preprocess
from latentbridge.protocol import ErrorCode, LatentBridgeError

FIELD = "controls.0.preprocessor"


def picture(width=96, height=64) -> Image.Image:
    """Ramps in red and green, a checkerboard in blue: every pixel differs from its neighbours."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), ((x // 8 + y // 8) % 2) * 255], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def grey_ramp(width=256, height=4) -> Image.Image:
    """Grey levels 0..255 left to right (one column each at width 256)."""
    row = np.linspace(0, 255, width).round().astype(np.uint8)
    return Image.fromarray(np.repeat(np.repeat(row[None, :, None], height, 0), 3, 2), "RGB")


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def _error(call) -> LatentBridgeError:
    with pytest.raises(LatentBridgeError) as info:
        call()
    return info.value


# --------------------------------------------------------------------------------------------
# Tile and blur


@pytest.mark.parametrize(("rate", "size"), [(1.0, (96, 64)), (1.09, (96, 64)), (2.0, (48, 32)), (3.0, (32, 21)),
                                            (8.0, (12, 8))])
def test_tile_resample_shrinks_by_the_rate_with_area_averaging(rate, size):
    image = picture()
    out = preprocess("tile_resample", image, options={"down_sampling_rate": rate})
    assert out.size == size
    if rate < 1.1:  # the extension keeps the image below 1.1
        assert np.array_equal(arr(out), arr(image))
    else:
        assert np.array_equal(arr(out), cv2.resize(arr(image), size, interpolation=cv2.INTER_AREA))


def test_tile_resample_of_a_tiny_image_keeps_one_pixel():
    assert preprocess("tile_resample", Image.new("RGB", (3, 2)), options={"down_sampling_rate": 8}).size == (1, 1)


@pytest.mark.parametrize("sigma", [0.5, 3.0, 9.0])
def test_blur_is_opencvs_gaussian_with_that_sigma(sigma):
    image = picture()
    out = preprocess("blur_gaussian", image, options={"sigma": sigma})
    assert np.array_equal(arr(out), cv2.GaussianBlur(arr(image), (0, 0), sigma))
    assert not np.array_equal(arr(out), arr(image))


def test_blur_defaults_to_the_extensions_sigma_9():
    image = picture()
    assert np.array_equal(arr(preprocess("blur_gaussian", image)), cv2.GaussianBlur(arr(image), (0, 0), 9.0))


# --------------------------------------------------------------------------------------------
# Threshold and binary


@pytest.mark.parametrize("cut", [0, 64, 127, 200])
def test_threshold_is_white_exactly_above_the_cut_of_the_darkest_channel(cut):
    out = arr(preprocess("threshold", grey_ramp(), options={"threshold": cut}))
    levels = arr(grey_ramp())[0, :, 0]
    assert set(np.unique(out)) <= {0, 255} and (out == out[..., :1]).all()
    assert np.array_equal(out[0, :, 0] == 255, levels > cut)
    # The darkest channel decides: a pixel bright in red only stays black.
    coloured = Image.fromarray(np.array([[[250, 250, 10], [250, 250, 250]]], np.uint8))
    assert arr(preprocess("threshold", coloured))[0, :, 0].tolist() == [0, 255]


def test_binary_turns_dark_parts_white_at_the_given_cut():
    out = arr(preprocess("binary", grey_ramp(), options={"threshold": 100}))
    levels = arr(grey_ramp())[0, :, 0]
    assert set(np.unique(out)) == {0, 255}
    assert np.array_equal(out[0, :, 0] == 255, levels <= 100)


@pytest.mark.parametrize("otsu", [0, 255])
def test_binary_with_0_or_255_uses_otsus_threshold(otsu):
    # Two grey populations around 60 and 190: Otsu cuts between them, wherever a fixed cut would not.
    rng = np.random.default_rng(3)
    grey = np.where(rng.random((40, 40)) < 0.5, rng.integers(40, 80, (40, 40)), rng.integers(170, 210, (40, 40)))
    image = Image.fromarray(np.repeat(grey.astype(np.uint8)[..., None], 3, 2))
    cut, _ = cv2.threshold(grey.astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    assert 79 <= cut < 170  # between the populations (the lower one ends at 79)
    out = arr(preprocess("binary", image, options={"threshold": otsu}))[..., 0]
    assert np.array_equal(out == 255, grey <= cut)
    assert np.array_equal(out == 255, grey < 125)  # exactly the dark population


# --------------------------------------------------------------------------------------------
# Colour grid


def test_color_grid_is_uniform_blocks_of_the_cell_size():
    image = picture(128, 64)
    out = arr(preprocess("color_grid", image))  # cells of 64: a 2 x 1 grid
    assert out.shape == (64, 128, 3)
    small = cv2.resize(arr(image), (2, 1), interpolation=cv2.INTER_CUBIC)
    for column in range(2):
        block = out[:, column * 64:(column + 1) * 64].reshape(-1, 3)
        assert (block == small[0, column]).all()
    finer = arr(preprocess("color_grid", image, options={"cell": 16}))
    blocks = finer.reshape(4, 16, 8, 16, 3)
    assert (blocks == blocks[:, :1, :, :1]).all() and len(np.unique(finer.reshape(-1, 3), axis=0)) > 2


# --------------------------------------------------------------------------------------------
# Shuffle


def test_shuffle_is_the_same_for_a_seed_and_differs_across_seeds():
    image = picture()
    first = arr(preprocess("shuffle", image, options={"seed": 7}))
    assert np.array_equal(first, arr(preprocess("shuffle", image, options={"seed": 7})))
    assert not np.array_equal(first, arr(preprocess("shuffle", image, options={"seed": 8})))
    assert first.shape == arr(image).shape and not np.array_equal(first, arr(image))
    # Only the image's own colours move around: a two-colour image stays (almost) two-coloured.
    halves = np.zeros((64, 96, 3), np.uint8)
    halves[:, 48:] = 255
    moved = arr(preprocess("shuffle", Image.fromarray(halves), options={"seed": 7}))
    assert ((moved == 0) | (moved == 255)).mean() > 0.9


def test_shuffle_takes_the_generations_seed_unless_its_options_name_one():
    image = picture()
    by_seed = arr(preprocess("shuffle", image, seed=11))
    assert np.array_equal(by_seed, arr(preprocess("shuffle", image, options={"seed": 11})))
    assert np.array_equal(arr(preprocess("shuffle", image, options={"seed": 5}, seed=11)),
                          arr(preprocess("shuffle", image, options={"seed": 5})))
    assert np.array_equal(arr(preprocess("shuffle", image)), arr(preprocess("shuffle", image, options={"seed": 0})))


# --------------------------------------------------------------------------------------------
# Recolor


@pytest.mark.parametrize("gamma", [0.5, 1.0, 1.7])
def test_recolor_luminance_is_grey_lightness_with_the_gamma(gamma):
    image = picture()
    out = arr(preprocess("recolor_luminance", image, options={"gamma": gamma}))
    assert (out == out[..., :1]).all()  # grey
    lightness = cv2.cvtColor(arr(image), cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32) / 255
    assert np.array_equal(out[..., 0], (lightness ** np.float32(gamma) * 255).clip(0, 255).astype(np.uint8))
    # Pure green is lighter than pure blue (true luminance, red and blue not swapped).
    primaries = arr(preprocess("recolor_luminance", Image.fromarray(np.array([[[0, 255, 0], [0, 0, 255]]], np.uint8))))
    assert primaries[0, 0, 0] > primaries[0, 1, 0]


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_recolor_intensity_is_the_brightest_channel_with_the_gamma(gamma):
    image = picture()
    out = arr(preprocess("recolor_intensity", image, options={"gamma": gamma}))
    value = arr(image).max(axis=2).astype(np.float32) / 255
    assert (out == out[..., :1]).all()
    assert np.array_equal(out[..., 0], (value ** np.float32(gamma) * 255).clip(0, 255).astype(np.uint8))
    assert np.array_equal(arr(preprocess("recolor_intensity", image))[..., 0], arr(image).max(axis=2))


# --------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize(("name", "options", "field"), [
    ("tile_resample", {"down_sampling_rate": 0.5}, "down_sampling_rate"),
    ("tile_resample", {"down_sampling_rate": 9}, "down_sampling_rate"),
    ("blur_gaussian", {"sigma": 0}, "sigma"),
    ("blur_gaussian", {"sigma": 65}, "sigma"),
    ("threshold", {"threshold": 256}, "threshold"),
    ("threshold", {"threshold": 12.5}, "threshold"),
    ("binary", {"threshold": -1}, "threshold"),
    ("color_grid", {"cell": 0}, "cell"),
    ("shuffle", {"seed": -1}, "seed"),
    ("shuffle", {"seed": 2 ** 32}, "seed"),
    ("recolor_luminance", {"gamma": 0.05}, "gamma"),
    ("recolor_intensity", {"gamma": 2.5}, "gamma"),
    ("recolor_intensity", {"gama": 1.0}, "gama"),
])
def test_out_of_range_or_unknown_options_name_the_option(name, options, field):
    err = _error(lambda: preprocess(name, picture(), options=options, field=FIELD))
    assert err.code == ErrorCode.invalid_request and err.field == f"{FIELD}_options.{field}", err.field


# --------------------------------------------------------------------------------------------
# In a generation: the maps the engine hands the ControlNet


def test_a_requests_shuffle_draws_from_its_seed_and_tile_maps_are_fitted(engine):
    from latentbridge.protocol import GenerationRequest

    image = picture(64, 64)

    def maps(seed, **unit):
        request = GenerationRequest(prompt="bronze", steps=2, width=64, height=64, seed=seed,
                                    controls=[{"type": "tile", **unit}])
        run = engine.control_run(engine.model, request, {"control.0": image})
        return run, [arr(m) for m in run.images]

    _, (shuffled,) = maps(7, preprocessor="shuffle")
    assert np.array_equal(shuffled, arr(preprocess("shuffle", image, seed=7)))
    assert not np.array_equal(shuffled, maps(8, preprocessor="shuffle")[1][0])
    assert np.array_equal(maps(8, preprocessor="shuffle", preprocessor_options={"seed": 7})[1][0], shuffled)
    run, (small,) = maps(7, preprocessor="tile_resample", preprocessor_options={"down_sampling_rate": 4})
    assert small.shape == (16, 16, 3)
    fitted = run.pipeline_kwargs("text2image", 64, 64)["image"]  # what the pipeline gets: at the working size
    assert fitted.size == (64, 64)
    assert np.array_equal(arr(fitted), arr(Image.fromarray(small).resize((64, 64), Image.Resampling.LANCZOS)))
