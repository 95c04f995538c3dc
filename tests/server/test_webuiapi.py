"""The real `webuiapi` client (what A1111 scripts use) against the real server on a real port:
every call docs/a1111.md says works."""

from __future__ import annotations

import asyncio
import threading
import time

import cv2
import numpy as np
import pytest
import webuiapi
from a1111_helpers import gradient, pixels
from live_server import LiveServer
from PIL import Image, ImageDraw

from latentbridge.server.app import JOBS_KEY, create_app
from latentbridge.settings import Settings

SIZE = 64


@pytest.fixture(scope="module")
def live(tiny_engine, tmp_path_factory):
    """One server for the module (its options persist between tests, as a real one's would)."""
    from lora_factory import save_tiny_lora

    root = tmp_path_factory.mktemp("webuiapi")
    save_tiny_lora(root / "loras" / "detail.safetensors")
    (root / "styles.csv").write_text('name,prompt,negative_prompt\nbronze,"{prompt}, cast bronze",plastic\n')
    folders = {"lora_dirs": [root / "loras"], "styles_file": root / "styles.csv"}
    settings = Settings(model="tiny", data_dir=root / "data", preview_interval_s=0.0, **folders)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in folders.items():
            patch.setattr(tiny_engine.settings, key, value)
        server = LiveServer(create_app(settings, tiny_engine)).start()
        yield server
        server.stop()


@pytest.fixture
def api(live):
    return webuiapi.WebUIApi(baseurl=f"{live.url}/sdapi/v1", sampler="Euler a", steps=2)


def test_txt2img_batches_hires_styles_and_info(api):
    result = api.txt2img(prompt="a statue", seed=11, width=SIZE, height=SIZE, batch_size=2, n_iter=2, cfg_scale=1.0)
    assert len(result.images) == 4 and all(im.size == (SIZE, SIZE) for im in result.images)
    assert result.info["all_seeds"] == [11, 12, 13, 14] and result.info["sampler_name"] == "Euler a"
    assert result.parameters["seed"] == 11 and result.images[0].info["parameters"] == result.info["infotexts"][0]
    styled = api.txt2img(prompt="a statue <lora:detail:0.5>", styles=["bronze"], seed=11, width=SIZE, height=SIZE)
    assert styled.info["prompt"] == "a statue, cast bronze" and "<lora:detail:0.5>" in styled.info["infotexts"][0]
    hires = api.txt2img(prompt="a tower", seed=3, width=SIZE, height=SIZE, enable_hr=True, hr_scale=1.5,
                        hr_upscaler=webuiapi.HiResUpscaler.Latent, hr_second_pass_steps=2, denoising_strength=0.5)
    assert hires.image.size == (96, 96) and "Hires upscale: 1.5" in hires.info["infotexts"][0]
    again = api.txt2img(prompt="a tower", seed=3, width=SIZE, height=SIZE, enable_hr=True, hr_scale=1.5,
                        hr_upscaler=webuiapi.HiResUpscaler.Latent, hr_second_pass_steps=2, denoising_strength=0.5)
    assert np.array_equal(pixels(hires.image), pixels(again.image))


def test_async_txt2img(api):
    async def run():
        return await api.txt2img(prompt="async", seed=2, width=SIZE, height=SIZE, use_async=True)

    result = asyncio.run(run())
    assert result.image.size == (SIZE, SIZE) and result.info["seed"] == 2


def test_img2img_and_inpainting_keep_the_unmasked_pixels(api):
    init = gradient()
    out = api.img2img(images=[init], prompt="restyle", seed=4, width=SIZE, height=SIZE, denoising_strength=0.6)
    assert out.image.size == (SIZE, SIZE) and out.info["denoising_strength"] == 0.6
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, SIZE // 2 - 1, SIZE), fill=255)
    painted = api.img2img(images=[init], mask_image=mask, prompt="repaint", seed=4, width=SIZE, height=SIZE,
                          denoising_strength=0.9, mask_blur=0, inpainting_fill=1, inpaint_full_res=False)
    original = pixels(init)
    assert np.array_equal(pixels(painted.image)[:, SIZE // 2 + 1:], original[:, SIZE // 2 + 1:])
    assert np.abs(pixels(painted.image)[:, : SIZE // 2 - 2] - original[:, : SIZE // 2 - 2]).mean() > 5
    low = api.img2img(images=[init], prompt="barely", seed=4, width=SIZE, height=SIZE, denoising_strength=0.01)
    assert low.image.size == (SIZE, SIZE)  # at least one step, as A1111: never an error


def test_extras_and_png_info(api):
    source = api.txt2img(prompt="a lamp", seed=5, width=SIZE, height=SIZE).image
    single = api.extra_single_image(source, upscaler_1=webuiapi.Upscaler.Lanczos, upscaling_resize=2)
    assert single.image.size == (128, 128) and "Postprocess upscaler: Lanczos" in single.info
    batch = api.extra_batch_images([source, gradient(40, 24)], upscaler_1="Nearest", upscaling_resize=1.5)
    assert [im.size for im in batch.images] == [(96, 96), (56, 32)]
    info = api.png_info(source)
    assert info.info.startswith("a lamp\nSteps: 2, Sampler: Euler a") and info.parameters["Seed"] == "5"


def test_listings_options_and_model_helpers(api):
    names = api.util_get_sampler_names()
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ 3M SDE", "LMS", "Heun", "DPM2", "DPM2 a",
            "DPM++ 2S a", "DPM++ SDE", "DDIM", "PLMS", "UniPC", "LCM"} <= set(names)
    assert {"automatic", "karras", "exponential", "sgm_uniform", "beta"} <= set(api.util_get_scheduler_names())
    model_names = api.util_get_model_names()
    assert model_names[0].startswith("tiny [") and api.util_get_current_model() == model_names[0]
    api.util_set_model("tiny")  # finds the closest title, sets it through /options
    options = api.get_options()
    assert options["sd_model_checkpoint"] == model_names[0] and "CLIP_stop_at_last_layers" in options
    api.set_options({"jpeg_quality": 95, "some_extension_option": "kept"})
    assert api.get_options()["jpeg_quality"] == 95 and api.get_options()["some_extension_option"] == "kept"
    assert [lora["name"] for lora in api.get_loras()] == ["detail"]
    assert api.get_prompt_styles()[0]["name"] == "bronze"
    assert [u["name"] for u in api.get_upscalers()][:3] == ["None", "Lanczos", "Nearest"]
    assert api.get_latent_upscale_modes()[0]["name"] == "Latent"
    assert api.get_scripts() == {"txt2img": ["controlnet"], "img2img": ["controlnet"]}
    for empty in (api.get_sd_vae(), api.get_hypernetworks(), api.get_face_restorers(), api.get_realesrgan_models()):
        assert empty == []
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert set(api.get_memory()) == {"ram", "cuda"} and api.get_cmd_flags()["api"] is True
    assert api.get_sd_models()[0]["hash"] == model_names[0][-11:-1]
    assert api.refresh_checkpoints() is None
    api.util_wait_for_ready(check_interval=0.1)  # idle: returns at once
    # What needs an extension answers as A1111 does without it.
    assert api.custom_get("controlnet/render_openpose_json")["detail"] == "Not Found"
    with pytest.raises(RuntimeError) as info:
        api.interrogate(gradient())
    assert info.value.args[0] == 404


def test_progress_skip_and_interrupt_from_another_thread(api, live):
    jobs = live.app[JOBS_KEY]
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault(
        "r", api.txt2img(prompt="slow", seed=1, steps=150, n_iter=3, width=SIZE, height=SIZE)))
    worker.start()
    deadline = time.monotonic() + 60
    progress = api.get_progress()
    while time.monotonic() < deadline and progress["state"]["sampling_step"] < 1:
        time.sleep(0.02)
        progress = api.get_progress()
    assert progress["state"]["job_count"] == 3 and 0 < progress["progress"] < 1
    first = live.call(lambda: jobs.current_job.id)
    api.skip()
    while time.monotonic() < deadline and live.call(lambda: jobs.current_job and jobs.current_job.id) in (first, None):
        time.sleep(0.02)
    assert api.get_progress()["state"]["job_no"] == 1  # went on with the next batch
    api.interrupt()
    worker.join(60)
    assert results["r"].images == [] and api.get_progress()["state"]["job_count"] == 0


def test_a_token_server_takes_the_bearer_header(tiny_engine, make_settings):
    server = LiveServer(create_app(make_settings(token="tok-123"), tiny_engine)).start(token="tok-123")
    try:
        api = webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1", steps=2)
        with pytest.raises(RuntimeError) as info:
            api.txt2img(prompt="x", width=SIZE, height=SIZE)
        assert info.value.args[0] == 401
        api.session.headers["Authorization"] = "Bearer tok-123"
        assert api.txt2img(prompt="x", width=SIZE, height=SIZE).image.size == (SIZE, SIZE)
    finally:
        server.stop()


def test_controlnet_units_detect_and_lists(api):
    """webuiapi's ControlNetUnit helpers, as scripts use them with sd-webui-controlnet."""
    assert api.controlnet_version() == 3
    models = api.controlnet_model_list()
    controlnet = next(m for m in models if m.startswith("tiny-controlnet ["))
    adapter = next(m for m in models if m.startswith("tiny-ip-adapter ["))
    assert {"none", "canny", "ip-adapter_clip_sd15"} <= set(api.controlnet_module_list())
    picture = Image.new("RGB", (SIZE, SIZE), (10, 10, 10))
    ImageDraw.Draw(picture).rectangle((12, 12, 44, 52), fill=(240, 240, 240))
    plain = api.txt2img(prompt="a statue", seed=5, width=SIZE, height=SIZE, cfg_scale=1.0)
    canny = webuiapi.ControlNetUnit(image=picture, module="canny", model=controlnet, processor_res=64,
                                    threshold_a=50, threshold_b=150, control_mode=1)
    ip = webuiapi.ControlNetUnit(image=picture, module="ip-adapter_clip_sd15", model=adapter, weight=0.7)
    off = webuiapi.ControlNetUnit(image=picture, module="canny", model=controlnet, enabled=False)
    result = api.txt2img(prompt="a statue", seed=5, width=SIZE, height=SIZE, cfg_scale=1.0,
                         controlnet_units=[canny, off, ip])
    assert len(result.images) == 2  # the image and the canny unit's detected map
    assert not np.array_equal(pixels(result.image), pixels(plain.image))
    text = result.info["infotexts"][0]
    assert 'ControlNet 0: "Module: canny' in text and "Control Mode: My prompt is more important" in text
    assert 'ControlNet 1: "Module: ip-adapter_clip_sd15' in text and "ControlNet 2" not in text
    assert np.array_equal(np.asarray(result.images[1].convert("L")), cv2.Canny(np.asarray(picture), 50, 150))
    again = api.txt2img(prompt="a statue", seed=5, width=SIZE, height=SIZE, cfg_scale=1.0, controlnet_units=[canny, ip])
    assert np.array_equal(pixels(again.image), pixels(result.image))  # disabled units are left out
    img2img = api.img2img(images=[gradient()], prompt="restyle", seed=4, width=SIZE, height=SIZE,
                          denoising_strength=0.7, controlnet_units=[webuiapi.ControlNetUnit(module="invert", model=controlnet)])
    assert len(img2img.images) == 2  # no unit image: the init image is the input, as in the extension
    detected = api.controlnet_detect([picture], module="canny", processor_res=64, threshold_a=50, threshold_b=150)
    assert detected.info == "Success" and len(detected.images) == 1
    assert np.array_equal(np.asarray(detected.image.convert("L")), cv2.Canny(np.asarray(picture), 50, 150))
    with pytest.raises(RuntimeError):
        api.txt2img(prompt="x", width=SIZE, height=SIZE, controlnet_units=[
            webuiapi.ControlNetUnit(image=picture, module="openpose_full", model=controlnet)])


def test_controlnet_tile_upscale_through_webuiapi(api):
    """The common "ControlNet tile upscale": img2img at twice the size with a tile_resample unit
    and no unit image (the init image is the tile input), as webuiapi scripts send it."""
    controlnet = next(m for m in api.controlnet_model_list() if m.startswith("tiny-controlnet ["))
    init = gradient()
    tile = webuiapi.ControlNetUnit(module="tile_resample", model=controlnet, threshold_a=2.0, resize_mode="Just Resize")
    # A fresh `alwayson_scripts` each call: webuiapi's default dict keeps the previous call's units.
    plain = api.img2img(images=[init], prompt="sharp detail", seed=3, width=2 * SIZE, height=2 * SIZE,
                        denoising_strength=0.5, cfg_scale=1.0, alwayson_scripts={})
    assert len(plain.images) == 1
    result = api.img2img(images=[init], prompt="sharp detail", seed=3, width=2 * SIZE, height=2 * SIZE,
                         denoising_strength=0.5, cfg_scale=1.0, controlnet_units=[tile], alwayson_scripts={})
    assert len(result.images) == 2 and result.image.size == (2 * SIZE, 2 * SIZE)
    # The init image at the output size (as img2img resizes it), shrunk by 2, fitted to the output again.
    resized = np.asarray(init.resize((2 * SIZE, 2 * SIZE), Image.Resampling.LANCZOS))
    shrunk = cv2.resize(resized, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    expected = np.asarray(Image.fromarray(shrunk).resize((2 * SIZE, 2 * SIZE), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(result.images[1].convert("RGB")), expected)
    assert not np.array_equal(pixels(result.image), pixels(plain.image))  # the tile ControlNet took part
    assert 'ControlNet 0: "Module: tile_resample' in result.info["infotexts"][0]
    detected = api.controlnet_detect([init], module="tile_resample", threshold_a=4.0)
    assert detected.image.size == (SIZE // 4, SIZE // 4)
