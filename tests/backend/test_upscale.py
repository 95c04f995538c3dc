"""Upscalers: built-in Lanczos/Nearest, and model upscalers loaded with spandrel, tiled and wrapped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import gradient_image, make_engine, pixels, small_request
from PIL import Image
from upscaler_factory import save_tiny_esrgan, spandrel_or_skip

from latentbridge.engine import upscale
from latentbridge.protocol import Cancelled, InvalidRequest, Seamless, Unsupported
from latentbridge.settings import Settings


def _noise(width: int = 48, height: int = 40, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def test_builtin_resamplers_and_none(tmp_path):
    ups = upscale.Upscalers(Settings())
    image = gradient_image(40, 24)
    for name in ("Lanczos", "lanczos", "Nearest", "None"):
        assert ups.upscale(image, name, (80, 48), device=torch.device("cpu")).size == (80, 48)
    near = ups.upscale(image, "Nearest", (80, 48), device=torch.device("cpu"))
    assert np.array_equal(pixels(near)[::2, ::2], pixels(image))  # nearest doubles each pixel
    with pytest.raises(InvalidRequest) as info:
        ups.upscale(image, "4x-Missing", (80, 48), device=torch.device("cpu"))
    assert info.value.field == "upscaler" and "no --upscaler-dirs" in info.value.message


def test_a_wrapped_resize_is_periodic():
    image = _noise(32, 32)
    wrapped = upscale.resize(image, (64, 64), seamless=Seamless.xy)
    # Resizing commutes with rolling a tileable image: each edge's neighbour is the opposite edge.
    shifted = upscale.resize(Image.fromarray(np.roll(pixels(image).astype(np.uint8), 8, axis=1)), (64, 64),
                             seamless=Seamless.xy)
    assert np.abs(pixels(shifted) - np.roll(pixels(wrapped), 16, axis=1)).max() <= 1
    plain = upscale.resize(image, (64, 64))
    assert np.abs(pixels(plain)[:, :2] - pixels(wrapped)[:, :2]).max() > 10  # borders differ without wrap


def test_tile_spans_cover_the_axis_and_overlap():
    assert upscale._spans(100, 0, 8) == [(0, 100)] and upscale._spans(50, 64, 8) == [(0, 50)]
    spans = upscale._spans(200, 64, 8)
    assert spans[0] == (0, 64) and spans[-1] == (136, 200)
    assert all(b[0] < a[1] - 7 for a, b in zip(spans, spans[1:]))  # every seam overlaps by >= 8
    ramp = upscale._ramp(20, True, True, 4)
    assert ramp[0] < ramp[3] < 1 and ramp[5:15].eq(1).all() and ramp[-1] < 1


def test_model_files_are_listed_and_pickles_only_when_allowed(tmp_path):
    for name in ("4x-UltraSharp.safetensors", "RealESRGAN_x2plus.pth", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "SwinIR_x3.safetensors").write_bytes(b"x")
    names = {f.name: f.guessed_scale for f in upscale.upscaler_files(Settings(upscaler_dirs=[tmp_path]))}
    assert names == {"4x-UltraSharp": 4.0, "SwinIR_x3": 3.0}
    allowed = upscale.upscaler_files(Settings(upscaler_dirs=[tmp_path], allow_pickle=True))
    assert {f.name for f in allowed} == {"4x-UltraSharp", "RealESRGAN_x2plus", "SwinIR_x3"}


def test_without_spandrel_a_model_upscaler_is_a_typed_error_naming_the_extra(tmp_path, monkeypatch):
    (tmp_path / "4x-Model.safetensors").write_bytes(b"x")
    import builtins

    real_import = builtins.__import__

    def no_spandrel(name, *args, **kwargs):
        if name == "spandrel":
            raise ImportError("No module named 'spandrel'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spandrel)
    ups = upscale.Upscalers(Settings(upscaler_dirs=[tmp_path]))
    with pytest.raises(Unsupported) as info:
        ups.upscale(_noise(), "4x-Model", (96, 80), device=torch.device("cpu"))
    assert "latentbridge[upscalers]" in info.value.message and info.value.field == "upscaler"
    assert not upscale.spandrel_available()


# ---------------------------------------------------------------------------------------------
# With spandrel (the CI upscaler step)


@pytest.fixture
def esrgan_dir(tmp_path):
    spandrel_or_skip()
    save_tiny_esrgan(tmp_path / "2x-Tiny.safetensors", scale=2)
    save_tiny_esrgan(tmp_path / "4x-Tiny.safetensors", scale=4, seed=1)
    return tmp_path


@pytest.mark.upscalers
def test_a_model_upscaler_runs_tiled_and_the_tiles_blend(esrgan_dir):
    settings = Settings(upscaler_dirs=[esrgan_dir])
    ups = upscale.Upscalers(settings)
    entry = upscale.find_upscaler("2x-Tiny", settings)
    descriptor = ups.model(entry, torch.device("cpu"))
    assert descriptor.scale == 2 and descriptor.architecture.name == "ESRGAN"
    image = _noise(72, 56)
    whole = upscale.run_tiled(descriptor, image, tile=0)
    tiled = upscale.run_tiled(descriptor, image, tile=32, overlap=8)
    assert whole.size == tiled.size == (144, 112)
    # Tiles see less context at their borders, but the feathered seams keep the result close.
    assert np.abs(pixels(whole) - pixels(tiled)).mean() < 3


@pytest.mark.upscalers
def test_model_passes_repeat_until_the_size_then_lanczos(esrgan_dir):
    ups = upscale.Upscalers(Settings(upscaler_dirs=[esrgan_dir]))
    out = ups.upscale(_noise(24, 16), "2x-Tiny", (96, 64), device=torch.device("cpu"))  # two x2 passes
    assert out.size == (96, 64)
    assert ups.upscale(_noise(24, 16), "4x-Tiny.safetensors", (72, 48), device=torch.device("cpu")).size == (72, 48)
    cancel = __import__("threading").Event()
    cancel.set()
    with pytest.raises(Cancelled):
        ups.upscale(_noise(24, 16), "2x-Tiny", (96, 64), device=torch.device("cpu"), cancel=cancel)


@pytest.mark.upscalers
def test_a_wrapped_model_upscale_keeps_a_texture_tileable(esrgan_dir):
    ups = upscale.Upscalers(Settings(upscaler_dirs=[esrgan_dir]))
    image = _noise(32, 32, seed=3)
    kwargs = dict(device=torch.device("cpu"), seamless=Seamless.x, tile=0)
    base = pixels(ups.upscale(image, "2x-Tiny", (64, 64), **kwargs))
    rolled_in = Image.fromarray(np.roll(np.asarray(image), 8, axis=1))
    rolled = pixels(ups.upscale(rolled_in, "2x-Tiny", (64, 64), **kwargs))
    assert np.abs(rolled - np.roll(base, 16, axis=1)).max() <= 1


@pytest.mark.upscalers
def test_pickle_and_non_upscaler_files_are_refused(esrgan_dir, tmp_path):
    torch.save({"x": torch.zeros(1)}, esrgan_dir / "4x-Pickled.pth")
    with pytest.raises(InvalidRequest):  # not listed without --allow-pickle
        upscale.find_upscaler("4x-Pickled", Settings(upscaler_dirs=[esrgan_dir]))
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3, 3)}, str(esrgan_dir / "not-a-model.safetensors"))
    with pytest.raises(Unsupported, match="not an upscaler architecture"):
        upscale.Upscalers(Settings(upscaler_dirs=[esrgan_dir])).upscale(
            _noise(), "not-a-model", (96, 80), device=torch.device("cpu"))


@pytest.mark.upscalers
def test_hires_with_a_model_upscaler(esrgan_dir):
    engine = make_engine("tiny", upscaler_dirs=[esrgan_dir])
    request = small_request(steps=2, guidance=1.0, hires={"scale": 2, "upscaler": "2x-Tiny", "steps": 2, "strength": 0.5})
    out = engine.generate(request).images[0]
    assert out.size == (128, 128)
    assert np.array_equal(pixels(engine.generate(request).images[0]), pixels(out))
    up = engine.upscale(gradient_image(32, 32), "2x-Tiny", (64, 64))
    assert up.size == (64, 64) and engine.upscalers()[0]["available"]
