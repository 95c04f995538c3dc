"""Model upscalers through the A1111 routes: listed, used by extras and by the hires fix
(spandrel: these run in .ci/run's upscaler step; elsewhere they skip)."""

from __future__ import annotations

import pytest
from a1111_helpers import call, decode, gradient, info, png_b64, txt2img
from upscaler_factory import save_tiny_esrgan, spandrel_or_skip

from latentbridge.server.app import create_app

pytestmark = pytest.mark.upscalers


@pytest.fixture
async def client(aiohttp_client, tiny_engine, make_settings, monkeypatch, tmp_path):
    spandrel_or_skip()
    save_tiny_esrgan(tmp_path / "ups" / "2x-Tiny.safetensors", scale=2)
    save_tiny_esrgan(tmp_path / "ups" / "RealESRGAN_x4-tiny.safetensors", scale=4, seed=1)
    monkeypatch.setattr(tiny_engine.settings, "upscaler_dirs", [tmp_path / "ups"])
    return await aiohttp_client(create_app(make_settings(upscaler_dirs=[tmp_path / "ups"]), tiny_engine))


async def test_model_upscalers_are_listed_and_used_by_extras_and_hires(client, tmp_path):
    _, listed = await call(client, "GET", "/sdapi/v1/upscalers")
    models = {u["name"]: u for u in listed[3:]}
    assert set(models) == {"2x-Tiny", "RealESRGAN_x4-tiny"} and models["2x-Tiny"]["scale"] == 2.0
    assert models["2x-Tiny"]["model_path"] == str(tmp_path / "ups" / "2x-Tiny.safetensors")
    _, esrgan = await call(client, "GET", "/sdapi/v1/realesrgan-models")
    assert {m["name"] for m in esrgan} == {"2x-Tiny", "RealESRGAN_x4-tiny"}  # both are RRDB nets
    status, body = await call(client, "POST", "/sdapi/v1/extra-single-image", {
        "image": png_b64(gradient(40, 24)), "upscaler_1": "2x-Tiny", "upscaling_resize": 4})
    assert status == 200 and decode(body["image"]).size == (160, 96)  # two x2 passes
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(
        enable_hr=True, hr_scale=2, hr_upscaler="RealESRGAN_x4-tiny", denoising_strength=0.5, hr_second_pass_steps=2))
    assert status == 200 and decode(body["images"][0]).size == (128, 128)
    assert "Hires upscaler: RealESRGAN_x4-tiny" in info(body)["infotexts"][0]
