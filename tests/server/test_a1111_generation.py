"""A1111 generation beyond the basics: hires, skip, low denoising, styles, LoRA tags, embeddings,
VAE override, output formats, PNG info and extras, on the real app with the tiny model."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import torch
from a1111_helpers import SIZE, call, decode, gradient, info, pixels, png_b64, txt2img
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from latentbridge import images as image_utils
from latentbridge.protocol import JobState, LoraSpec
from latentbridge.server.app import JOBS_KEY, create_app


@pytest.fixture
def dirs_client(aiohttp_client, tiny_engine, make_settings, monkeypatch):
    """A client whose app and (shared, session) engine both see these folders."""

    async def make(**folders):
        settings = make_settings(**folders)
        for key, value in folders.items():
            monkeypatch.setattr(tiny_engine.settings, key, value)
        return await aiohttp_client(create_app(settings, tiny_engine))

    return make


async def test_hires_payloads_as_a1111_clients_send_them(client):
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(
        enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (bicubic)", hr_second_pass_steps=2, denoising_strength=0.5,
        hr_prompt="bronze, detailed"))
    assert status == 200, body
    assert decode(body["images"][0]).size == (96, 96)
    details = info(body)
    assert (details["width"], details["height"]) == (SIZE, SIZE)  # A1111 reports the first pass size
    assert details["extra_generation_params"]["Hires upscaler"] == "Latent (bicubic)"
    text = details["infotexts"][0]
    assert "Hires upscale: 1.5" in text and "Hires steps: 2" in text and "Denoising strength: 0.5" in text
    embedded = image_utils.read_png_request(base64.b64decode(body["images"][0]))
    assert embedded.hires.upscaler == "latent-bicubic" and embedded.hires.prompt == "bronze, detailed"
    # Resize to a box: cover, then crop; an image upscaler; the pre-1.0 firstphase fields.
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(
        enable_hr=True, hr_resize_x=112, hr_resize_y=80, hr_upscaler="Lanczos", denoising_strength=0.4))
    assert status == 200 and decode(body["images"][0]).size == (112, 80)
    assert "Hires resize: 112x80" in info(body)["infotexts"][0]
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(
        enable_hr=True, width=128, height=96, firstphase_width=64, firstphase_height=64, hr_upscaler="None"))
    assert status == 200, body
    assert decode(body["images"][0]).size == (128, 96) and info(body)["width"] == 64
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(enable_hr=True, hr_scale=100))
    assert status == 422 and body["field"] == "hr_scale"


async def test_skip_goes_on_with_the_next_batch_and_interrupt_stops(client):
    jobs = client.server.app[JOBS_KEY]
    call_task = asyncio.create_task(call(client, "POST", "/sdapi/v1/txt2img", txt2img(steps=150, n_iter=2)))
    for _ in range(600):
        if jobs.current_job is not None and jobs.current_job.step >= 1:
            break
        await asyncio.sleep(0.02)
    first = jobs.current_job.id
    assert await call(client, "POST", "/sdapi/v1/skip") == (200, None)
    for _ in range(600):
        if jobs.current_job is not None and jobs.current_job.id != first:
            break
        await asyncio.sleep(0.02)
    assert jobs.current_job is not None and jobs.current_job.id != first  # the second batch runs
    assert await call(client, "POST", "/sdapi/v1/interrupt") == (200, {})
    status, body = await asyncio.wait_for(call_task, 60)
    assert status == 200 and body["images"] == []
    assert [h.state for h in jobs.history(10)][:2] == [JobState.cancelled, JobState.cancelled]


async def test_a_low_denoising_strength_runs_one_step_never_a_422(client):
    payload = txt2img(init_images=[png_b64(gradient())], denoising_strength=0.01, steps=4)
    status, body = await call(client, "POST", "/sdapi/v1/img2img", payload)
    assert status == 200 and len(body["images"]) == 1 and info(body)["denoising_strength"] == 0.01
    status, body = await call(client, "POST", "/sdapi/v1/img2img", {**payload, "denoising_strength": 0})
    assert status == 200


async def test_styles_and_lora_tags_translate_into_the_same_request_as_ours(dirs_client, tmp_path):
    from lora_factory import save_tiny_lora

    save_tiny_lora(tmp_path / "loras" / "detail.safetensors")
    (tmp_path / "styles.csv").write_text('name,prompt,negative_prompt\nbronze,"{prompt}, cast bronze",plastic\n')
    client = await dirs_client(lora_dirs=[tmp_path / "loras"], styles_file=tmp_path / "styles.csv")
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(
        prompt="a statue <lora:detail:0.8>", negative_prompt="blurry", styles=["bronze", "not-in-the-file"]))
    assert status == 200, body
    embedded = image_utils.read_png_request(base64.b64decode(body["images"][0]))
    assert embedded.prompt == "a statue, cast bronze" and embedded.negative_prompt == "blurry, plastic"
    assert embedded.loras == [LoraSpec(name="detail", weight=0.8)]
    details = info(body)
    assert details["prompt"] == "a statue, cast bronze"
    assert "<lora:detail:0.8>" in details["infotexts"][0] and 'Lora hashes: "detail: ' in details["infotexts"][0]
    # The same picture as our own API's request with that LoRA.
    resp = await client.post("/api/v1/jobs", json={"request": embedded.model_dump(mode="json")})
    job_id = (await resp.json())["job_id"]
    for _ in range(600):
        if (await call(client, "GET", f"/api/v1/jobs/{job_id}"))[1]["state"] == "done":
            break
        await asyncio.sleep(0.05)
    ours = Image.open(io.BytesIO(await (await client.get(f"/api/v1/jobs/{job_id}/results/0")).read()))
    assert np.array_equal(pixels(ours), pixels(decode(body["images"][0])))


async def test_embeddings_vae_and_clip_skip_from_options_and_overrides(dirs_client, tmp_path):
    from latentbridge.engine import tiny

    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 5},
              str(tmp_path / "bronzestyle.safetensors"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        tiny._vae(sdxl=False).save_pretrained(tmp_path / "vaes" / "other-vae")
    client = await dirs_client(embedding_dirs=[tmp_path], vae_dirs=[tmp_path / "vaes"])
    _, listing = await call(client, "GET", "/sdapi/v1/embeddings")
    assert listing["loaded"]["bronzestyle"]["vectors"] == 2
    _, vaes = await call(client, "GET", "/sdapi/v1/sd-vae")
    assert vaes == [{"model_name": "other-vae", "filename": str(tmp_path / "vaes" / "other-vae")}]
    plain = decode((await call(client, "POST", "/sdapi/v1/txt2img", txt2img(prompt="a vase")))[1]["images"][0])
    styled = decode((await call(client, "POST", "/sdapi/v1/txt2img", txt2img(prompt="a vase bronzestyle")))[1]["images"][0])
    assert not np.array_equal(pixels(plain), pixels(styled))
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(
        prompt="a vase", override_settings={"sd_vae": "other-vae", "CLIP_stop_at_last_layers": 2}))
    assert status == 200, body
    assert info(body)["sd_vae_name"] == "other-vae" and info(body)["clip_skip"] == 2
    assert "VAE hash: " in info(body)["infotexts"][0] and "Clip skip: 2" in info(body)["infotexts"][0]
    assert not np.array_equal(pixels(decode(body["images"][0])), pixels(plain))
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(override_settings={"sd_vae": "missing"}))
    assert status == 422 and body["field"] == "override_settings.sd_vae"


async def test_samples_format_and_png_info_read_what_a1111_writes(client):
    await call(client, "POST", "/sdapi/v1/options", {"samples_format": "jpg"})
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(prompt="a lamp"))
    jpeg = base64.b64decode(body["images"][0])
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    status, read = await call(client, "POST", "/sdapi/v1/png-info", {"image": body["images"][0]})
    assert status == 200 and read["info"] == info(body)["infotexts"][0] and read["parameters"]["Prompt"] == "a lamp"
    await call(client, "POST", "/sdapi/v1/options", {"samples_format": "png"})
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(prompt="a lamp"))
    status, read = await call(client, "POST", "/sdapi/v1/png-info", {"image": "data:image/png;base64," + body["images"][0]})
    assert read["info"].startswith("a lamp\nSteps: 2, Sampler: Euler, ") and read["parameters"]["Seed"] == "7"
    assert json.loads(read["items"]["latentbridge"])["prompt"] == "a lamp"
    # Only our request chunk: png-info reads it as the infotext it stands for.
    png = base64.b64decode(body["images"][0])
    with Image.open(io.BytesIO(png)) as image:
        meta = PngImagePlugin.PngInfo()
        meta.add_text("latentbridge", image.info["latentbridge"])
        only_ours = png_b64(image, pnginfo=meta)
    _, read = await call(client, "POST", "/sdapi/v1/png-info", {"image": only_ours})
    assert read["info"].startswith("a lamp\nSteps: 2") and read["parameters"]["Sampler"] == "Euler"
    _, read = await call(client, "POST", "/sdapi/v1/png-info", {"image": png_b64(gradient())})
    assert (read["info"], read["items"]) == ("", {}) and read["parameters"]["Prompt"] == ""
    status, read = await call(client, "POST", "/sdapi/v1/png-info", {"image": base64.b64encode(b"junk").decode()})
    assert status == 422 and read["code"] == "bad_image" and read["field"] == "image"


async def test_extras_upscale_like_a1111s_postprocessing(client):
    source = gradient(40, 24)
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "kept through the upscale")
    image = png_b64(source, pnginfo=meta)
    status, body = await call(client, "POST", "/sdapi/v1/extra-single-image",
                              {"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert status == 200 and set(body) == {"html_info", "image"}
    out = decode(body["image"])
    assert out.size == (80, 48) and body["html_info"] == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    assert out.info["parameters"] == "kept through the upscale" and "Postprocess upscaler: Lanczos" in out.info["postprocessing"]
    # To a size, cropped; a second upscaler blended in; several images at once.
    status, body = await call(client, "POST", "/sdapi/v1/extra-batch-images", {
        "imageList": [{"data": image, "name": "a"}, {"data": png_b64(gradient(24, 40)), "name": "b"}],
        "resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 64, "upscaling_crop": True,
        "upscaler_1": "Nearest", "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.5})
    assert status == 200 and [decode(i).size for i in body["images"]] == [(64, 64), (64, 64)]
    assert "Postprocess upscaler 2: Lanczos" in body["html_info"] and "crop to: 64x64" in body["html_info"]
    status, body = await call(client, "POST", "/sdapi/v1/extra-single-image", {"image": image, "upscaler_1": "None"})
    assert status == 200 and decode(body["image"]).size == (40, 24)  # A1111: no first upscaler, no upscale
    for payload, code, field in (
            ({"upscaler_1": "Lanczos", "upscaling_resize": 500}, "too_large", "upscaling_resize"),
            ({"upscaler_1": "R-ESRGAN 4x+"}, "invalid_request", "upscaler"),
            ({"upscaler_1": "Lanczos", "codeformer_visibility": 1}, "unsupported", "codeformer_visibility")):
        status, body = await call(client, "POST", "/sdapi/v1/extra-single-image", {"image": image, **payload})
        assert (body["code"], body["field"]) == (code, field) and status in (413, 422), body


# A1111 1.10's Processed.js() keys, its txt2img API fields, and its progress state.
A1111_INFO_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed", "all_subseeds",
    "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size", "restore_faces",
    "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "seed_resize_from_w",
    "seed_resize_from_h", "denoising_strength", "extra_generation_params", "index_of_first_image", "infotexts",
    "styles", "job_timestamp", "clip_skip", "is_using_inpainting_conditioning", "version"}
A1111_TXT2IMG_FIELDS = {
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
    "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height",
    "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength", "s_min_uncond",
    "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings", "override_settings_restore_afterwards",
    "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks", "firstpass_image", "comments", "enable_hr",
    "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
    "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
    "force_task_id", "sampler_index", "script_name", "script_args", "send_images", "save_images", "alwayson_scripts",
    "infotext"}
A1111_STATE_KEYS = {"skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no",
                    "sampling_step", "sampling_steps"}


async def test_response_shapes_are_a1111s(client):
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(batch_size=2))
    assert status == 200 and set(body) == {"images", "parameters", "info"} and isinstance(body["info"], str)
    details = info(body)
    assert set(details) == A1111_INFO_KEYS
    assert len(details["all_seeds"]) == len(details["all_prompts"]) == len(details["infotexts"]) == 2
    assert isinstance(details["sd_model_hash"], str) and len(details["sd_model_hash"]) == 10
    assert set(body["parameters"]) == A1111_TXT2IMG_FIELDS and body["parameters"]["sampler_name"] == "Euler"
    status, body = await call(client, "POST", "/sdapi/v1/img2img", txt2img(init_images=[png_b64(gradient())]))
    assert set(body["parameters"]) >= A1111_TXT2IMG_FIELDS | {"init_images", "resize_mode", "mask", "mask_blur",
                                                              "inpainting_fill", "inpaint_full_res",
                                                              "inpaint_full_res_padding", "inpainting_mask_invert"}
    assert body["parameters"]["init_images"] is None and "include_init_images" not in body["parameters"]
    _, progress = await call(client, "GET", "/sdapi/v1/progress")
    assert set(progress) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert set(progress["state"]) == A1111_STATE_KEYS and progress["state"]["job_count"] == 0
