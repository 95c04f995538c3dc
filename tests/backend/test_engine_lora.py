"""LoRAs on the tiny SD1 model: applied for one request at the requested weight, always removed
afterwards (also on errors and cancellation), resolved only inside the LoRA folders for remote
callers, and refused with typed `loras` errors when missing, unsafe or broken."""

import threading

import numpy as np
import pytest
import torch
from engine_helpers import pixels, small_request
from lora_factory import has_lora_layers, save_tiny_lora

from latentbridge.engine import Engine
from latentbridge.engine.lora import resolve_lora
from latentbridge.protocol import Cancelled, ErrorCode, LatentBridgeError
from latentbridge.settings import Settings


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    save_tiny_lora(root / "style.safetensors")
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    (root / "old.ckpt").write_bytes(b"not really a pickle")
    save_tiny_lora(root / "for-sdxl.safetensors", preset="tiny-sdxl")  # wrong shapes for an SD1 UNet
    return root


@pytest.fixture(scope="module")
def outside_lora(tmp_path_factory):
    """The same LoRA as `style`, stored outside the LoRA folders."""
    return save_tiny_lora(tmp_path_factory.mktemp("elsewhere") / "mine.safetensors")


@pytest.fixture(scope="module")
def lora_engine(lora_dir) -> Engine:
    engine = Engine(Settings(model="tiny", lora_dirs=[lora_dir]))  # local=False: a server's engine
    engine.load()
    return engine


def _image(engine: Engine, **fields) -> np.ndarray:
    return pixels(engine.generate(small_request(steps=2, **fields)).images[0])


@pytest.fixture(scope="module")
def base_image(lora_engine) -> np.ndarray:
    return _image(lora_engine)


@pytest.fixture(scope="module")
def styled_image(lora_engine, base_image) -> np.ndarray:
    return _image(lora_engine, loras=[{"name": "style", "weight": 1.0}])


def _assert_clean(engine: Engine, base_image: np.ndarray) -> None:
    """No LoRA layer left anywhere, and the base model gives the base image bit for bit."""
    for component in (engine.model.base.unet, engine.model.base.text_encoder):
        assert not has_lora_layers(component)
    assert np.array_equal(_image(engine), base_image)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_lora_changes_the_image_and_is_removed_afterwards(lora_engine, base_image, styled_image):
    assert _distance(styled_image, base_image) > 5
    _assert_clean(lora_engine, base_image)


def test_lora_weight_scales_the_effect(lora_engine, base_image, styled_image):
    half = _image(lora_engine, loras=[{"name": "style.safetensors", "weight": 0.5}])  # suffix optional
    zero = _image(lora_engine, loras=[{"name": "style", "weight": 0.0}])
    assert 0 < _distance(half, base_image) < _distance(styled_image, base_image)
    assert _distance(zero, base_image) < 0.5 * _distance(half, base_image)
    _assert_clean(lora_engine, base_image)


def test_lora_cancelled_mid_request_is_still_removed(lora_engine, base_image):
    cancel = threading.Event()
    seen = []

    def on_step(update):
        seen.append(has_lora_layers(lora_engine.model.base.unet))  # applied while generating
        cancel.set()

    with pytest.raises(Cancelled):
        lora_engine.generate(small_request(steps=4, loras=[{"name": "style"}]), on_step=on_step, cancel=cancel)
    assert seen == [True]
    _assert_clean(lora_engine, base_image)


@pytest.mark.parametrize(
    "name, code, words",
    [
        ("missing", ErrorCode.invalid_request, "not found"),
        ("../loras-elsewhere/x.safetensors", ErrorCode.invalid_request, "outside"),
        ("old.ckpt", ErrorCode.unsupported, "--allow-pickle"),
        ("corrupt", ErrorCode.invalid_request, "is corrupt or truncated"),
        ("for-sdxl", ErrorCode.invalid_request, "could not be applied"),
    ],
)
def test_bad_loras_are_typed_errors_and_leave_the_engine_clean(lora_engine, base_image, name, code, words):
    model = lora_engine.model
    with pytest.raises(LatentBridgeError) as info:
        lora_engine.generate(small_request(steps=2, loras=[{"name": name}]))
    assert info.value.field == "loras" and info.value.code is code
    assert words in info.value.message
    assert lora_engine.model is model  # no reload
    _assert_clean(lora_engine, base_image)


def test_a_failing_second_lora_also_removes_the_first(lora_engine, base_image):
    with pytest.raises(LatentBridgeError) as info:
        lora_engine.generate(small_request(steps=2, loras=[{"name": "style"}, {"name": "corrupt"}]))
    assert info.value.field == "loras"
    _assert_clean(lora_engine, base_image)


def test_local_callers_may_name_any_path_remote_ones_may_not(lora_engine, outside_lora, styled_image, monkeypatch):
    request = small_request(steps=2, loras=[{"name": str(outside_lora)}])
    with pytest.raises(LatentBridgeError) as info:
        lora_engine.generate(request)
    assert info.value.field == "loras" and "outside" in info.value.message
    monkeypatch.setattr(lora_engine, "local", True)
    # The same weights as `style`, from a path outside the LoRA folders: the same image.
    assert np.array_equal(pixels(lora_engine.generate(request).images[0]), styled_image)


def test_resolve_lora_stays_inside_the_lora_folders(lora_dir, outside_lora, tmp_path):
    settings = Settings(lora_dirs=[lora_dir])
    assert resolve_lora("style", settings, local=False) == lora_dir.resolve() / "style.safetensors"
    assert resolve_lora("style.safetensors", settings, local=False) == lora_dir.resolve() / "style.safetensors"
    for name in ("../elsewhere/mine.safetensors", str(outside_lora), "/etc/passwd"):
        with pytest.raises(LatentBridgeError) as info:
            resolve_lora(name, settings, local=False)
        assert info.value.field == "loras" and "outside" in info.value.message
    assert resolve_lora(str(outside_lora), settings, local=True) == outside_lora
    with pytest.raises(LatentBridgeError) as info:
        resolve_lora(str(outside_lora), Settings(), local=False)  # no LoRA folders: nothing resolves
    assert "not found" in info.value.message and "--lora-dirs" in info.value.message
    with pytest.raises(LatentBridgeError):
        resolve_lora(str(tmp_path / "absent.safetensors"), settings, local=True)


def _wraps(unet, latent: torch.Tensor, dim: int, **kwargs) -> bool:
    """Is the UNet shift-equivariant along `dim` (what circular padding on that axis gives)?
    The scaled-up LoRA makes activations larger, so rounding noise reaches ~1e-3; a non-wrapped
    axis is off by ~1."""
    out = unet(latent.roll(4, dims=dim), **kwargs).sample
    expected = unet(latent, **kwargs).sample.roll(4, dims=dim)
    return torch.allclose(out, expected, atol=1e-2)


def test_lora_with_seamless_wraps_only_the_requested_axis(lora_engine, base_image):
    unet = lora_engine.model.base.unet
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    seen = []

    def check(update):
        if update.step == 1:
            kwargs = dict(timestep=10, encoder_hidden_states=text)
            seen.append((has_lora_layers(unet), _wraps(unet, latent, 3, **kwargs), _wraps(unet, latent, 2, **kwargs)))

    lora_engine.generate(small_request(steps=2, seamless="x", loras=[{"name": "style"}]), on_step=check)
    assert seen == [(True, True, False)]
    _assert_clean(lora_engine, base_image)
