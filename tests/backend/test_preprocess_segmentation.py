"""The `segmentation` preprocessor: a transformers semantic-segmentation model (the built-in random
SegFormer `tiny-segmentation`, and the same saved to a folder and loaded back through the real
loading code), its classes in the ADE20K colours the segmentation ControlNets were trained on,
the estimator's loading rules and typed errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentbridge.engine import ade20k, tiny_estimators
from latentbridge.engine.estimators import SEGMENTATION, EstimatorCache
from latentbridge.engine.preprocess import PREPROCESSORS, available, preprocess
from latentbridge.protocol import ErrorCode, LatentBridgeError
from latentbridge.settings import Settings

FIELD = "controls.0.preprocessor"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def segmenters() -> EstimatorCache:
    return EstimatorCache(Settings(segmentation_estimator="tiny-segmentation"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return tiny_estimators.save(tmp_path_factory.mktemp("segmenters") / "tiny-segmentation-saved", "tiny-segmentation")


def picture(width=96, height=64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), ((x // 8 + y // 8) % 2) * 255], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def colours(image: Image.Image) -> set[tuple[int, ...]]:
    return {tuple(c) for c in np.asarray(image).reshape(-1, 3)}


def test_the_palette_is_the_add_ons():
    """The add-on draws segmentation maps from Blender's passes with the same table."""
    spec = importlib.util.spec_from_file_location("addon_ade20k", ROOT / "blender_addon" / "ade20k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert np.array_equal(module.PALETTE, ade20k.PALETTE)
    assert ade20k.PALETTE.shape == (151, 3) and tuple(ade20k.PALETTE[1]) == (120, 120, 120)  # wall
    assert len({tuple(c) for c in ade20k.PALETTE}) >= 149  # (mmsegmentation repeats two colours)


def test_colorize_takes_the_models_zero_based_ids():
    labels = np.array([[0, 1, 2], [149, 150, 151]])
    out = ade20k.colorize(labels)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert [tuple(c) for c in out[0]] == [tuple(ade20k.PALETTE[k]) for k in (1, 2, 3)]
    assert [tuple(c) for c in out[1]] == [tuple(ade20k.PALETTE[k]) for k in (150, 1, 2)]  # past 150: wraps


def test_the_map_colours_the_models_classes(monkeypatch, segmenters):
    """With the model's logits fixed (class 2, sky, on the left half; class 12, person, on the right),
    the map is exactly those two ADE20K colours, split where the classes are."""
    model = segmenters.get(kind=SEGMENTATION).model
    original = model.forward

    def forward(pixel_values=None, **kwargs):
        out = original(pixel_values=pixel_values, **kwargs)
        logits = torch.zeros_like(out.logits)
        half = logits.shape[-1] // 2
        logits[:, 2, :, :half] = 10.0
        logits[:, 12, :, half:] = 10.0
        out.logits = logits
        return out

    monkeypatch.setattr(model, "forward", forward)
    out = np.asarray(preprocess("segmentation", picture(), estimators=segmenters))
    assert out.shape == (64, 96, 3)
    assert tuple(out[10, 5]) == tuple(ade20k.PALETTE[3]) and tuple(out[10, 90]) == tuple(ade20k.PALETTE[13])
    assert colours(Image.fromarray(out)) == {tuple(ade20k.PALETTE[3]), tuple(ade20k.PALETTE[13])}


def test_the_tiny_segmenter_end_to_end_from_the_builtin_and_from_a_folder(segmenters, saved):
    image = picture()
    first = preprocess("segmentation", image, estimators=segmenters)
    assert first.size == image.size and first.mode == "RGB"
    palette = {tuple(c) for c in ade20k.PALETTE[1:]}
    assert colours(first) <= palette and len(colours(first)) > 1  # classes vary over the picture
    assert np.array_equal(np.asarray(first), np.asarray(preprocess("segmentation", image, estimators=segmenters)))
    loaded = EstimatorCache(Settings(segmentation_estimator=str(saved)))
    from_folder = preprocess("segmentation", image, estimators=loaded)
    assert np.array_equal(np.asarray(first), np.asarray(from_folder))
    assert type(loaded.get(kind=SEGMENTATION).model).__name__ == "SegformerForSemanticSegmentation"


def test_listed_and_described_only_with_an_estimator():
    assert "segmentation" not in available(Settings())
    assert "segmentation" in available(Settings(segmentation_estimator="tiny-segmentation"))
    assert "depth" not in available(Settings(segmentation_estimator="tiny-segmentation"))
    described = PREPROCESSORS["segmentation"].describe()
    assert described["needs_estimator"] and described["estimator"] == "segmentation_estimator"
    assert PREPROCESSORS["depth"].describe()["estimator"] == "depth_estimator"


def _error(call) -> LatentBridgeError:
    with pytest.raises(LatentBridgeError) as info:
        call()
    return info.value


def test_typed_errors_say_what_to_pass(tmp_path, saved):
    err = _error(lambda: preprocess("segmentation", picture(), estimators=EstimatorCache(Settings()), field=FIELD))
    assert err.code == ErrorCode.unsupported and err.field == FIELD and "--segmentation-estimator" in err.message
    err = _error(lambda: preprocess("segmentation", picture(), estimators=None, field=FIELD))
    assert err.code == ErrorCode.unsupported and "--segmentation-estimator" in err.message
    # The depth estimator's built-in is not a segmenter, and a depth model's folder does not load as one.
    wrong = EstimatorCache(Settings(segmentation_estimator="tiny-depth"))
    err = _error(lambda: wrong.get(field=FIELD, kind=SEGMENTATION))
    assert err.code == ErrorCode.unknown_model and "tiny-segmentation" in err.message
    depth_folder = tiny_estimators.save(tmp_path / "depth")
    err = _error(lambda: EstimatorCache(Settings(segmentation_estimator=str(depth_folder))).get(field=FIELD,
                                                                                                kind=SEGMENTATION))
    assert err.code == ErrorCode.model_load_failed and err.field == FIELD
    assert "segmentation estimator" in err.message
    # Pickle-only weights need the opt-in, as every model's do.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (pickled / name).write_bytes((saved / name).read_bytes())
    model, _ = tiny_estimators.build("tiny-segmentation")
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    err = _error(lambda: EstimatorCache(Settings(segmentation_estimator=str(pickled))).get(field=FIELD,
                                                                                           kind=SEGMENTATION))
    assert err.code == ErrorCode.unsupported and "--allow-pickle" in err.message


def test_depth_and_segmentation_estimators_share_one_bounded_cache(segmenters):
    cache = EstimatorCache(Settings(depth_estimator="tiny-depth", segmentation_estimator="tiny-segmentation"),
                           capacity=2)
    depth = cache.get()
    segmenter = cache.get(kind=SEGMENTATION)
    assert depth is not segmenter and cache.loaded() == ["tiny-depth", "tiny-segmentation"]
    assert cache.get() is depth and cache.get(kind=SEGMENTATION) is segmenter  # each loaded once
