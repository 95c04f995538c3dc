"""Reference images (IP-Adapter) in the engine, on the tiny SD1 (also its 9-channel inpainting
variant) and SDXL models with their built-in random adapters: every mode, with and without
ControlNet units, weight 0 = exactly no reference, several images, reproducibility, the adapter
unloaded afterwards (the model untouched, bit for bit), the bounded cache, sources, typed errors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import box_mask, gradient_image, make_engine, pixels, small_request
from lora_factory import has_lora_layers, save_tiny_lora
from PIL import Image

from latentbridge import model_dirs
from latentbridge.engine import Engine, reference, tiny_ip_adapter
from latentbridge.protocol import Cancelled, ErrorCode, LatentBridgeError, MissingImage, UnknownModel, Unsupported
from latentbridge.settings import Settings


def _picture(seed: int, size=(48, 40)) -> Image.Image:
    """A reference picture with structure (a blurred random field)."""
    rng = np.random.default_rng(seed)
    field = rng.random((size[1] // 8, size[0] // 8, 3))
    return Image.fromarray((field * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)


def _run(engine: Engine, weight: float | None = 0.8, pictures=(11,), controls=(), model=None, **fields) -> np.ndarray:
    """The image of a request with reference images `pictures` at `weight` (None: no reference)."""
    mode = fields.get("mode", "txt2img")
    init = gradient_image() if mode != "txt2img" else None
    mask = box_mask() if mode == "inpaint" else None
    inputs = {f"control.{i}": _picture(100 + i, (64, 64)) for i in range(len(controls))}
    if weight is not None:
        fields["reference"] = {"images": len(pictures), "weight": weight, "model": model}
        inputs.update({f"reference.{i}": _picture(seed) for i, seed in enumerate(pictures)})
    fields.setdefault("steps", 2)
    result = engine.generate(small_request(controls=list(controls), **fields), init_image=init, mask=mask, inputs=inputs)
    return pixels(result.images[0])


MODES = [dict(mode="txt2img"), dict(mode="img2img", strength=0.9), dict(mode="inpaint", strength=1.0),
         dict(mode="outpaint", strength=1.0, outpaint={"right": 16})]


@pytest.mark.parametrize("fixture", ["engine", "inpaint_engine", "sdxl_engine"])
@pytest.mark.parametrize("controls", [(), ({"type": "depth"},)], ids=["plain", "controlnet"])
def test_references_change_the_image_in_every_mode_reproducibly(request, fixture, controls):
    engine = request.getfixturevalue(fixture)
    for fields in MODES:
        plain = _run(engine, None, controls=controls, **fields)
        referenced = _run(engine, controls=controls, **fields)
        assert np.abs(referenced - plain).max() > 8, (fixture, fields)
        assert np.array_equal(_run(engine, controls=controls, **fields), referenced), (fixture, fields)  # bit-identical


def test_references_with_controlnet_union(sdxl_engine):
    union = ({"type": "depth", "model": "tiny-controlnet-union-sdxl", "weight": 0.3},
             {"type": "canny", "model": "tiny-controlnet-union-sdxl", "weight": 0.3})
    referenced = _run(sdxl_engine, 1.5, controls=union)
    assert np.abs(referenced - _run(sdxl_engine, None, controls=union)).max() > 8
    assert np.array_equal(_run(sdxl_engine, 1.5, controls=union), referenced)


@pytest.mark.parametrize("fixture", ["engine", "sdxl_engine"])
def test_weight_zero_is_exactly_the_image_without_references(request, fixture):
    engine = request.getfixturevalue(fixture)
    for controls in ((), ({"type": "depth"},)):
        assert np.array_equal(_run(engine, 0.0, controls=controls), _run(engine, None, controls=controls))


def test_weight_scales_the_effect_and_every_image_counts(engine):
    plain, full = _run(engine, None), _run(engine, 1.0)
    half = _run(engine, 0.4)
    distance = lambda a, b: float(np.abs(a - b).mean())  # noqa: E731
    assert 0 < distance(half, plain) < distance(full, plain)
    one, other = _run(engine, pictures=(11,)), _run(engine, pictures=(12,))
    both = _run(engine, pictures=(11, 12))
    assert distance(one, other) > 1  # the picture matters, not just that there is one
    assert distance(both, one) > 1 and distance(both, other) > 1
    swapped = _run(engine, pictures=(12, 11))
    assert np.abs(swapped - both).max() <= 1  # a set of images: the order does not matter (up to float sums)


def test_batches_hires_and_seamless_take_references(engine):
    batch = engine.generate(small_request(steps=2, batch_size=2, reference={"images": 1}),
                            inputs={"reference.0": _picture(11)})
    second = engine.generate(small_request(steps=2, seed=8, reference={"images": 1}), inputs={"reference.0": _picture(11)})
    assert np.array_equal(pixels(batch.images[1]), pixels(second.images[0]))  # image i = seed + i
    hires = dict(hires={"scale": 1.5, "steps": 2, "strength": 0.6})
    assert np.abs(_run(engine, **hires) - _run(engine, None, **hires)).mean() > 2  # both passes
    assert _run(engine, seamless="xy").shape == (64, 64, 3)


def _model_state(engine: Engine) -> dict:
    """Everything the adapter may touch: the UNet's weights, modules, processors and config, and
    each pipeline's image encoder and feature extractor."""
    model = engine.model
    unet = model.base.unet
    pipes = [model.base, *model.pipes.values()]
    return {
        "weights": {k: v.clone() for k, v in unet.state_dict().items()},
        "modules": [name for name, _ in unet.named_modules()],
        "children": list(unet._modules),
        "processors": {k: id(v) for k, v in unet.attn_processors.items()},
        "projection": (unet.encoder_hid_proj, unet.config.encoder_hid_dim_type, hasattr(unet, "text_encoder_hid_proj")),
        "components": [(getattr(p, "image_encoder", None), getattr(p, "feature_extractor", None),
                        p.config.get("image_encoder"), p.config.get("feature_extractor")) for p in pipes],
    }


def _assert_same_state(before: dict, after: dict) -> None:
    assert before["weights"].keys() == after["weights"].keys()
    assert all(torch.equal(before["weights"][k], after["weights"][k]) for k in before["weights"])
    for key in ("modules", "children", "processors", "projection", "components"):
        assert before[key] == after[key], key


@pytest.mark.parametrize("fixture", ["engine", "sdxl_engine"])
def test_the_adapter_is_unloaded_afterwards_leaving_the_model_untouched(request, fixture):
    engine = request.getfixturevalue(fixture)
    for fields in MODES:
        _run(engine, None, **fields)  # every mode's pipeline exists before the snapshot
    before, plain = _model_state(engine), _run(engine, None)
    for fields in MODES:
        _run(engine, **fields)
        _run(engine, controls=({"type": "depth"},), **fields)
    _assert_same_state(before, _model_state(engine))
    assert np.array_equal(_run(engine, None), plain)


def test_the_adapter_is_unloaded_after_a_cancel_and_a_failure(engine, monkeypatch):
    before, plain = _model_state(engine), _run(engine, None)
    cancel = threading.Event()

    def on_step(update):
        cancel.set()

    with pytest.raises(Cancelled):
        engine.generate(small_request(steps=4, reference={"images": 1}), inputs={"reference.0": _picture(1)},
                        on_step=on_step, cancel=cancel)
    from diffusers import StableDiffusionPipeline

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(StableDiffusionPipeline, "prepare_ip_adapter_image_embeds", fail)
    with pytest.raises(RuntimeError, match="boom"):  # a failure inside the call, after the adapter is in
        engine.generate(small_request(steps=2, reference={"images": 1}), inputs={"reference.0": _picture(1)})
    monkeypatch.undo()
    _assert_same_state(before, _model_state(engine))
    assert np.array_equal(_run(engine, None), plain)


def test_loras_and_references_together_both_come_off(tmp_path):
    save_tiny_lora(tmp_path / "style.safetensors")
    engine = Engine(Settings(model="tiny", lora_dirs=[tmp_path]), local=True)
    plain = _run(engine, None)
    lora = dict(loras=[{"name": "style"}])
    assert np.abs(_run(engine, **lora) - _run(engine, None, **lora)).mean() > 2
    assert not has_lora_layers(engine.model.base.unet)
    assert np.array_equal(_run(engine, None), plain)


def test_adapters_load_once_and_the_cache_is_bounded(monkeypatch):
    engine = Engine(Settings(model="tiny"), local=True)
    loads = []
    real = reference.AdapterCache._load
    monkeypatch.setattr(reference.AdapterCache, "_load",
                        lambda self, name, source, *a: loads.append(name) or real(self, name, source, *a))
    engine._references.capacity = 1
    for _ in range(3):
        _run(engine)
    assert loads == ["tiny-ip-adapter"]
    assert engine._references.names() == ["tiny-ip-adapter"]


# --------------------------------------------------------------------------------------------
# Sources


def save_ip_adapter(name: str, path: Path, *, encoder: bool = True, pickle: bool = False) -> Path:
    """A built-in adapter written as users keep one: h94's layout, `image_encoder/` beside the file."""
    from safetensors.torch import save_file

    state_dict, image_encoder = tiny_ip_adapter.build(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pickle:
        torch.save(state_dict, path)
    else:
        save_file({f"{part}.{k}": v.contiguous() for part, weights in state_dict.items() for k, v in weights.items()},
                  str(path))
    if encoder:
        image_encoder.save_pretrained(path.parent / "image_encoder")
    return path


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ip-adapters")
    save_ip_adapter("tiny-ip-adapter", root / "models" / "ip-adapter_tiny.safetensors")
    save_ip_adapter("tiny-ip-adapter-sdxl", root / "sdxl_models" / "ip-adapter_tiny_sdxl.safetensors")
    save_ip_adapter("tiny-ip-adapter", root / "bare" / "no-encoder.safetensors", encoder=False)
    save_ip_adapter("tiny-ip-adapter", root / "old" / "ip-adapter.bin", pickle=True)
    (root / "models" / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{oops")
    from safetensors.torch import save_file

    save_file({"controlnet_cond_embedding.conv_in.weight": torch.zeros(1)}, str(root / "models" / "a-controlnet.safetensors"))
    return root


def test_adapter_files_give_the_builtin_image(engine, adapter_dir):
    expected = _run(engine, model="tiny-ip-adapter")
    remote = Engine(Settings(model="tiny", controlnet_dirs=[adapter_dir]))  # a server's engine
    local = Engine(Settings(model="tiny"), local=True)
    configured = Engine(Settings(model="tiny", ip_adapter=str(adapter_dir / "models" / "ip-adapter_tiny.safetensors")))
    pickled = Engine(Settings(model="tiny", controlnet_dirs=[adapter_dir], allow_pickle=True))
    for eng, name in ((remote, "models/ip-adapter_tiny.safetensors"),
                      (local, str(adapter_dir / "models" / "ip-adapter_tiny.safetensors")),
                      (configured, None), (pickled, "old/ip-adapter.bin")):
        assert np.array_equal(_run(eng, model=name), expected), name
    sdxl = Engine(Settings(model="tiny-sdxl", controlnet_dirs=[adapter_dir]))
    assert np.array_equal(_run(sdxl, model="sdxl_models/ip-adapter_tiny_sdxl.safetensors"),
                          _run(make_engine("tiny-sdxl"), model="tiny-ip-adapter-sdxl"))


def test_the_folders_list_adapters_apart_from_controlnets(adapter_dir):
    kinds = {e.name: e.kind for e in model_dirs.component_entries([adapter_dir])}
    assert kinds["models/ip-adapter_tiny.safetensors"] == "ip_adapter"
    assert kinds["models/a-controlnet.safetensors"] == "single_file"
    assert not any("image_encoder" in name for name in kinds)


@pytest.mark.parametrize("name, error, words", [
    ("models/corrupt.safetensors", LatentBridgeError, "corrupt"),
    ("models/a-controlnet.safetensors", LatentBridgeError, "not an IP-Adapter"),
    ("bare/no-encoder.safetensors", UnknownModel, "needs its image encoder"),
    ("old/ip-adapter.bin", LatentBridgeError, "pickle"),
    ("models", UnknownModel, "is a folder"),
    ("missing.safetensors", UnknownModel, "unknown IP-Adapter"),
    ("../elsewhere.safetensors", UnknownModel, "outside"),
    ("/etc/passwd", UnknownModel, "not by path"),
    ("sdxl_models/ip-adapter_tiny_sdxl.safetensors", Unsupported, "made for another model"),
])
def test_bad_adapter_names_are_typed_errors_naming_the_field(adapter_dir, name, error, words):
    engine = Engine(Settings(model="tiny", controlnet_dirs=[adapter_dir]))
    with pytest.raises(error) as info:
        _run(engine, model=name)
    assert info.value.field == "reference.model" and words in info.value.message, info.value.message


def test_a_hub_adapter_offline_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = Engine(Settings(model="tiny"), local=True)
    with pytest.raises(UnknownModel) as info:
        _run(engine, model="someone/ip-adapters/models/ip-adapter_sd15.safetensors")
    assert info.value.field == "reference.model" and "downloads are off" in info.value.message


def test_what_cannot_be_done_is_refused_with_the_field(engine):
    with pytest.raises(MissingImage) as info:
        engine.generate(small_request(reference={"images": 2}), inputs={"reference.0": _picture(1)})
    assert info.value.field == "reference"
    for name in ("tiny-sd3", "tiny-flux"):
        with pytest.raises(Unsupported) as info:
            _run(Engine(Settings(model=name), local=True), steps=1)
        assert info.value.field == "reference" and "SD 1.x/2.x and SDXL" in info.value.message
    random_mid = Engine(Settings(model="random-mid"), local=True)
    with pytest.raises(LatentBridgeError) as info:  # no built-in adapter fits it, none configured
        _run(random_mid, steps=1)
    assert info.value.code is ErrorCode.invalid_request and "--ip-adapter" in info.value.message
    with pytest.raises(UnknownModel):  # weight 0 still checks the name
        _run(engine, 0.0, model="nothing-like-this")


def test_adapters_the_encoder_cannot_feed_are_refused(engine):
    state_dict, encoder = tiny_ip_adapter.build("tiny-ip-adapter")
    wide = {"image_proj": {**state_dict["image_proj"], "proj.weight": torch.zeros(128, 48)}, "ip_adapter": {}}
    wide["ip_adapter"] = state_dict["ip_adapter"]
    with pytest.raises(LatentBridgeError, match="gives 32-wide embeddings"):
        reference._check_kind("wide", wide, encoder, "reference.model")
    face_id = {"image_proj": {"norm.weight": torch.zeros(32), "proj.0.weight": torch.zeros(64, 512)},
               "ip_adapter": state_dict["ip_adapter"]}
    with pytest.raises(Unsupported, match="FaceID"):
        reference._check_kind("face", face_id, encoder, "reference.model")


def test_capabilities_say_where_references_work(engine, sdxl_engine, adapter_dir):
    assert engine.control_capabilities()["reference"] and sdxl_engine.control_capabilities()["reference"]
    for name in ("tiny-sd3", "random-mid"):
        assert not make_engine(name).control_capabilities()["reference"], name
    with_folder = make_engine("random-mid", controlnet_dirs=[adapter_dir])
    assert with_folder.control_capabilities()["reference"]  # an adapter is in the folders
