"""ControlNet in the engine, on every tiny family with its built-in random ControlNet: every mode
diffusers has, several units, weight 0 = exactly no unit, start/end, control modes, seamless,
reproducibility, shared weights, the bounded cache, sources, and typed errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import box_mask, gradient_image, make_engine, pixels, small_request
from PIL import Image

from latentbridge.engine import Engine, control, tiny_control
from latentbridge.protocol import ControlType, ErrorCode, LatentBridgeError, MissingImage, UnknownModel, Unsupported
from latentbridge.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ldm_checkpoint import save_ldm_controlnet  # noqa: E402


def _map(seed: int = 0, size=(64, 64)) -> Image.Image:
    """A control map with structure (a blurred random field): any change in it shows in the image."""
    rng = np.random.default_rng(seed)
    field = rng.random((size[1] // 8, size[0] // 8, 3))
    return Image.fromarray((field * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)


def _run(engine: Engine, controls=(), images=None, **fields) -> np.ndarray:
    mode = fields.get("mode", "txt2img")
    init = gradient_image() if mode != "txt2img" else None
    mask = box_mask() if mode == "inpaint" else None
    images = images or {f"control.{i}": _map(i) for i in range(len(controls))}
    fields.setdefault("steps", 2)
    result = engine.generate(small_request(controls=list(controls), **fields), init_image=init, mask=mask,
                             inputs=images)
    return pixels(result.images[0])


@pytest.fixture(scope="module")
def sd3_engine() -> Engine:
    return make_engine("tiny-sd3")


@pytest.fixture(scope="module")
def flux_engine() -> Engine:
    return make_engine("tiny-flux")


MODES = [dict(mode="txt2img"), dict(mode="img2img", strength=0.9), dict(mode="inpaint", strength=1.0),
         dict(mode="outpaint", strength=1.0, outpaint={"right": 16})]


@pytest.mark.parametrize("fixture, unit, modes", [
    ("engine", {"type": "depth"}, MODES),
    ("inpaint_engine", {"type": "depth"}, MODES),  # a 9-channel inpainting UNet
    ("sdxl_engine", {"type": "depth"}, MODES),
    ("sdxl_engine", {"type": "normal", "model": "tiny-controlnet-union-sdxl"}, MODES),
    ("flux_engine", {"type": "canny"}, MODES),
    ("sd3_engine", {"type": "depth"}, MODES[:1]),
])
def test_control_changes_the_image_in_every_mode_reproducibly(request, fixture, unit, modes):
    engine = request.getfixturevalue(fixture)
    for fields in modes:
        plain = _run(engine, **fields)
        controlled = _run(engine, [unit], **fields)
        assert np.abs(controlled - plain).max() > 8, (fixture, fields)
        assert np.array_equal(_run(engine, [unit], **fields), controlled), (fixture, fields)  # bit-identical


@pytest.mark.parametrize("fixture, unit", [
    ("engine", {"type": "depth"}),
    ("sdxl_engine", {"type": "depth"}),
    ("sdxl_engine", {"type": "normal", "model": "tiny-controlnet-union-sdxl"}),
    ("flux_engine", {"type": "canny"}),
    ("sd3_engine", {"type": "depth"}),
])
def test_the_map_itself_steers_the_image(request, fixture, unit):
    """Not only the ControlNet's presence: two different maps give two different images (the
    built-in ControlNets see their image, tiny_control.py)."""
    engine = request.getfixturevalue(fixture)
    first = _run(engine, [unit], images={"control.0": _map(1)})
    second = _run(engine, [unit], images={"control.0": _map(2)})
    black = _run(engine, [unit], images={"control.0": Image.new("RGB", (64, 64))})
    assert np.abs(first - second).max() > 8 and np.abs(first - black).max() > 8, fixture


@pytest.mark.parametrize("fixture, model", [("engine", None), ("sdxl_engine", None),
                                            ("sdxl_engine", "tiny-controlnet-union-sdxl"), ("flux_engine", None),
                                            ("sd3_engine", None)])
def test_weight_zero_is_exactly_the_image_without_that_unit(request, fixture, model):
    engine = request.getfixturevalue(fixture)
    plain = _run(engine)
    unit = {"type": "depth", "model": model}
    assert np.array_equal(_run(engine, [{**unit, "weight": 0.0}]), plain)
    one = _run(engine, [unit])
    assert np.array_equal(_run(engine, [unit, {**unit, "type": "canny", "weight": 0.0}]), one)


def test_several_units_add_up_and_each_one_counts(engine):
    depth, canny = {"type": "depth"}, {"type": "canny", "weight": 0.7}
    both = _run(engine, [depth, canny])
    assert np.abs(both - _run(engine, [depth])).max() > 8
    swapped = _run(engine, [canny, depth], images={"control.0": _map(1), "control.1": _map(0)})
    assert np.abs(swapped.astype(int) - both).max() <= 1  # order does not matter (up to float sums)


def test_start_and_end_bound_the_control_to_part_of_the_steps(engine):
    full = _run(engine, [{"type": "depth"}], steps=4)
    plain = _run(engine, steps=4)
    late = _run(engine, [{"type": "depth", "start": 0.5}], steps=4)
    early = _run(engine, [{"type": "depth", "end": 0.5}], steps=4)
    for partial in (late, early):
        assert np.abs(partial - full).max() > 4 and np.abs(partial - plain).max() > 4
    assert np.abs(late - early).max() > 4


def test_control_modes_differ_and_leave_no_hook_behind(engine, sdxl_engine):
    for eng in (engine, sdxl_engine):
        balanced = _run(eng, [{"type": "depth"}])
        prompt = _run(eng, [{"type": "depth", "mode": "prompt"}])
        stronger = _run(eng, [{"type": "depth", "mode": "control"}])
        assert np.abs(prompt - balanced).max() > 4 and np.abs(stronger - balanced).max() > 4
        assert np.array_equal(_run(eng, [{"type": "depth"}]), balanced)  # hooks removed afterwards


def test_guidance_one_makes_control_mode_only_soft(engine):
    """Without classifier-free guidance there is no unconditional half to leave out: `control` is `prompt`."""
    prompt = _run(engine, [{"type": "depth", "mode": "prompt"}], guidance=1.0)
    assert np.array_equal(_run(engine, [{"type": "depth", "mode": "control"}], guidance=1.0), prompt)


def test_one_controlnet_used_by_two_units_with_different_modes(engine):
    unit = {"type": "depth", "model": "tiny-controlnet"}
    single = _run(engine, [unit])
    assert np.array_equal(_run(engine, [unit, {**unit, "mode": "prompt", "weight": 0.0}]), single)
    assert np.abs(_run(engine, [unit, {**unit, "mode": "prompt"}]) - single).max() > 4


def test_control_pipelines_share_the_models_weights(engine):
    model = engine.model
    net = engine._controlnets.get("tiny-controlnet", model, "controls.0.model").net
    ptrs = lambda module: [p.data_ptr() for p in module.parameters()]  # noqa: E731
    for kind in ("text2image", "image2image", "inpaint"):
        pipe = model.control_pipe(kind, net)
        for name in ("unet", "vae", "text_encoder"):
            assert ptrs(getattr(pipe, name)) == ptrs(getattr(model.base, name)), (kind, name)
        assert pipe.controlnet is net


def test_seamless_stays_seamless_with_control(monkeypatch):
    """Shifting the initial noise and the control map by whole latents shifts the image exactly
    when the ControlNet wraps too (as the UNet and VAE do)."""
    import diffusers.pipelines.controlnet.pipeline_controlnet as cn_pipe

    engine = Engine(Settings(model="tiny", vae_tiling="off"), local=True)
    request = small_request(width=128, height=64, steps=3, seed=11, seamless="x", controls=[{"type": "depth"}])
    depth = _map(5, (128, 64))
    base = pixels(engine.generate(request, inputs={"control.0": depth}).images[0])
    original = cn_pipe.randn_tensor
    monkeypatch.setattr(cn_pipe, "randn_tensor", lambda *a, **k: original(*a, **k).roll(4, dims=3))
    rolled_map = Image.fromarray(np.roll(np.asarray(depth), 32, axis=1))
    shifted = pixels(engine.generate(request, inputs={"control.0": rolled_map}).images[0])
    diff = np.abs(shifted - np.roll(base, 32, axis=1))
    assert diff.max() <= 2 and diff.mean() < 0.05
    # Without wrapping the same shift does not carry over.
    flat = pixels(engine.generate(request.model_copy(update={"seamless": "none"}), inputs={"control.0": rolled_map}).images[0])
    monkeypatch.setattr(cn_pipe, "randn_tensor", original)
    plain = pixels(engine.generate(request.model_copy(update={"seamless": "none"}), inputs={"control.0": depth}).images[0])
    assert np.abs(flat - np.roll(plain, 32, axis=1)).mean() > 2


def test_only_masked_inpaint_crops_the_maps_like_the_image(engine):
    out = _run(engine, [{"type": "depth"}], mode="inpaint", strength=1.0, mask={"only_masked": True, "padding": 8, "blur": 0})
    assert out.shape == (64, 64, 3)
    outside = box_mask().point(lambda v: 255 - v)
    keep = np.asarray(outside) == 255
    assert np.array_equal(out[keep], pixels(gradient_image())[keep])  # untouched outside the mask


def test_every_control_type_runs_and_union_modes_differ(sdxl_engine):
    union = {"model": "tiny-controlnet-union-sdxl"}
    outputs = {t: _run(sdxl_engine, [{"type": t.value, **union}]) for t in ControlType}
    assert np.abs(outputs[ControlType.depth] - outputs[ControlType.normal]).max() > 4  # different control modes
    assert np.array_equal(outputs[ControlType.canny], outputs[ControlType.lineart])  # one Union mode for both
    for t in ControlType:
        _run(sdxl_engine, [{"type": t.value}])  # single-type ControlNets take any map


def test_controlnets_load_once_and_the_cache_is_bounded(monkeypatch):
    engine = Engine(Settings(model="tiny-sdxl", controlnet_cache=1), local=True)
    loads = []
    real = control.ControlNetCache._load
    monkeypatch.setattr(control.ControlNetCache, "_load", lambda self, source, *a: loads.append(source.ref) or real(self, source, *a))
    for name in ("tiny-controlnet-sdxl", "tiny-controlnet-sdxl", "tiny-controlnet-union-sdxl", "tiny-controlnet-sdxl"):
        _run(engine, [{"type": "depth", "model": name}])
    assert loads == ["tiny-controlnet-sdxl", "tiny-controlnet-union-sdxl", "tiny-controlnet-sdxl"]
    assert engine._controlnets.names() == ["tiny-controlnet-sdxl"]


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory) -> Path:
    """A ControlNet folder as a user keeps one: a diffusers folder, an original-layout single file
    with its config folder beside it, a corrupt file."""
    root = tmp_path_factory.mktemp("controlnets")
    net = tiny_control.build_controlnet("tiny-controlnet")
    net.save_pretrained(root / "depth-folder")
    save_ldm_controlnet(net, root / "depth-single.safetensors")
    net.save_config(root / "depth-single")
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{oops")
    return root


def test_controlnet_sources_give_the_builtin_image(engine, controlnet_dir):
    reference = _run(engine, [{"type": "depth", "model": "tiny-controlnet"}])
    remote = Engine(Settings(model="tiny", controlnet_dirs=[controlnet_dir]))  # a server's engine
    local = Engine(Settings(model="tiny"), local=True)
    for eng, name in ((remote, "depth-folder"), (remote, "depth-single.safetensors"),
                      (local, str(controlnet_dir / "depth-folder")), (local, str(controlnet_dir / "depth-single.safetensors"))):
        assert np.array_equal(_run(eng, [{"type": "depth", "model": name}]), reference), name


@pytest.mark.parametrize("name, error, words", [
    ("corrupt.safetensors", LatentBridgeError, "corrupt"),
    ("missing", UnknownModel, "unknown ControlNet"),
    ("../elsewhere.safetensors", UnknownModel, "outside"),
    ("/etc/passwd", UnknownModel, "not by path"),
])
def test_bad_controlnet_names_are_typed_errors_naming_the_unit(controlnet_dir, name, error, words):
    engine = Engine(Settings(model="tiny", controlnet_dirs=[controlnet_dir]))
    with pytest.raises(error) as info:
        _run(engine, [{"type": "depth"}, {"type": "canny", "model": name}])
    assert info.value.field == "controls.1.model" and words in info.value.message


def test_a_hub_controlnet_offline_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = Engine(Settings(model="tiny"), local=True)
    with pytest.raises(UnknownModel) as info:
        _run(engine, [{"type": "depth", "model": "someone/controlnet-depth"}])
    assert info.value.field == "controls.0.model" and "downloads are off" in info.value.message


def test_what_cannot_be_done_is_refused_with_the_field(engine, sdxl_engine, sd3_engine, flux_engine):
    cases = [
        (sdxl_engine, [{"type": "depth", "model": "tiny-controlnet"}], {}, Unsupported, "controls.0.model"),
        (sd3_engine, [{"type": "depth"}], dict(mode="img2img", strength=0.9), Unsupported, "controls"),
        (flux_engine, [{"type": "depth", "mode": "prompt"}], {}, Unsupported, "controls.0.mode"),
        (sdxl_engine, [{"type": "depth"}, {"type": "depth", "model": "tiny-controlnet-union-sdxl"}], {}, Unsupported,
         "controls"),
    ]
    for eng, units, fields, error, field in cases:
        with pytest.raises(error) as info:
            _run(eng, units, **fields)
        assert info.value.field == field, info.value.message
    with pytest.raises(MissingImage) as info:
        engine.generate(small_request(controls=[{"type": "depth"}]), inputs={})
    assert info.value.field == "controls.0"
    random_mid = Engine(Settings(model="random-mid"), local=True)
    with pytest.raises(LatentBridgeError) as info:  # a model with no built-in ControlNet and none configured
        random_mid.generate(small_request(steps=1, controls=[{"type": "depth"}]), inputs={"control.0": _map()})
    assert info.value.code is ErrorCode.invalid_request and "--controlnet-models depth=" in info.value.message


def test_configured_default_per_type(engine):
    configured = Engine(Settings(model="tiny", controlnet_models=["depth=tiny-controlnet"]), local=True)
    assert np.array_equal(_run(configured, [{"type": "depth"}]), _run(engine, [{"type": "depth", "model": "tiny-controlnet"}]))
    assert control.default_models(configured.settings) == {"depth": "tiny-controlnet"}
    assert torch.is_tensor(next(configured._controlnets.get("tiny-controlnet", configured.model, "f").net.parameters()))
