"""The AUTOMATIC1111-compatible routes against the real app and the real tiny-model Engine."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from latentbridge import images as image_utils
from latentbridge.protocol import JobState, Sampler, Schedule, Unsupported
from latentbridge.server.a1111.errors import A1111Error
from latentbridge.server.a1111 import apply_inpainting_fill, resolve_sampler
from latentbridge.server.app import JOBS_KEY, create_app
from latentbridge.settings import load_settings

SIZE = 64


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def gradient(width: int = SIZE, height: int = SIZE) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def decode_png(text: str) -> Image.Image:
    data = base64.b64decode(text)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


async def wait_ready(client, timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        resp = await client.get("/api/v1/health")
        body = await resp.json()
        if (body.get("model") or {}).get("state") == "ready":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("model never became ready")


@pytest.fixture
async def lb(aiohttp_client, tmp_path):
    settings = load_settings(environ={}, model="tiny", data_dir=tmp_path / "data", preview_interval_s=0.0)
    client = await aiohttp_client(create_app(settings))
    await wait_ready(client)
    return client


# A txt2img payload as the `webuiapi` package / AI-Render send it: every field spelled out,
# including many this server does not use (they must be ignored, not refused).
def webui_txt2img(**overrides):
    payload = {
        "enable_hr": False, "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
        "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0,
        "prompt": "weathered bronze, verdigris", "styles": [], "seed": 1234, "subseed": -1,
        "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
        "sampler_name": "DPM++ 2M Karras", "batch_size": 1, "n_iter": 1, "steps": 2, "cfg_scale": 7.0,
        "width": SIZE, "height": SIZE, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
        "do_not_save_grid": False, "negative_prompt": "blurry", "eta": 1.0, "s_min_uncond": 0, "s_churn": 0,
        "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
        "override_settings_restore_afterwards": True, "script_args": [], "sampler_index": "Euler",
        "script_name": None, "send_images": True, "save_images": False, "alwayson_scripts": {},
        "comments": {}, "refiner_checkpoint": None, "refiner_switch_at": 0,
    }
    payload.update(overrides)
    return payload


async def post_json(client, path, payload):
    resp = await client.post(path, json=payload)
    return resp.status, await resp.json()


async def test_txt2img_webui_payload_batches_and_info(lb):
    status, body = await post_json(lb, "/sdapi/v1/txt2img", webui_txt2img(batch_size=2, n_iter=2))
    assert status == 200, body
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 4
    for text in body["images"]:
        assert decode_png(text).size == (SIZE, SIZE)
    info = json.loads(body["info"])
    # A1111 seeding: image i of iteration k gets seed + k * batch_size + i.
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235, 1236, 1237]
    # A1111 >= 1.9 reports "DPM++ 2M Karras" as sampler "DPM++ 2M" with schedule type Karras.
    assert info["sampler_name"] == "DPM++ 2M" and info["steps"] == 2 and info["cfg_scale"] == 7.0
    assert info["extra_generation_params"]["Schedule type"] == "Karras"
    assert info["prompt"] == "weathered bronze, verdigris" and info["negative_prompt"] == "blurry"
    assert info["all_prompts"] == ["weathered bronze, verdigris"] * 4
    assert len(info["infotexts"]) == 4 and "Seed: 1236" in info["infotexts"][2]
    assert info["infotexts"][0].startswith("weathered bronze, verdigris\nNegative prompt: blurry\nSteps: 2")
    assert body["parameters"]["seed"] == 1234 and body["parameters"]["n_iter"] == 2
    # The PNG carries our full request: the image can be regenerated exactly.
    embedded = image_utils.read_png_request(base64.b64decode(body["images"][3]))
    assert embedded is not None and (embedded.sampler, embedded.schedule) == (Sampler.dpmpp_2m, Schedule.karras)

    # The second iteration (seed 1236, batch of 2) equals a fresh call with that seed, and
    # "DPM++ 2M" + scheduler "Karras" is the same sampler as "DPM++ 2M Karras".
    status, again = await post_json(lb, "/sdapi/v1/txt2img", webui_txt2img(
        seed=1236, batch_size=2, sampler_name="DPM++ 2M", scheduler="Karras"))
    assert status == 200, again
    assert np.array_equal(np.asarray(decode_png(again["images"][0])), np.asarray(decode_png(body["images"][2])))
    assert json.loads(again["info"])["all_seeds"] == [1236, 1237]


async def test_seed_minus_one_tiling_and_send_images_false(lb):
    status, body = await post_json(lb, "/sdapi/v1/txt2img", {
        "prompt": "tile", "seed": -1, "steps": 2, "width": SIZE, "height": SIZE, "tiling": True,
        "sampler_name": "Euler a"})
    assert status == 200, body
    info = json.loads(body["info"])
    assert 0 <= info["seed"] < 2**32 and info["all_seeds"] == [info["seed"]]
    assert f"Seed: {info['seed']}" in info["infotexts"][0]
    assert body["parameters"]["seed"] == -1  # echoed as sent, like A1111
    embedded = image_utils.read_png_request(base64.b64decode(body["images"][0]))
    assert embedded.seamless.value == "xy" and embedded.seed == info["seed"]

    status, body = await post_json(lb, "/sdapi/v1/txt2img", {"prompt": "x", "steps": 2, "width": SIZE, "height": SIZE,
                                                            "send_images": False})
    assert status == 200 and body["images"] == []


async def test_img2img_data_url_inpaint_with_inverted_mask(lb):
    init = gradient()
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))  # white left half
    payload = {
        "init_images": ["data:image/png;base64," + b64(png_bytes(init))],
        "mask": "data:image/png;base64," + b64(png_bytes(mask)),
        "prompt": "repaint", "seed": 7, "steps": 3, "width": SIZE, "height": SIZE,
        "denoising_strength": 0.9, "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False,
        "inpaint_full_res_padding": 32, "inpainting_mask_invert": 1, "resize_mode": 0,
        "sampler_name": "Euler", "include_init_images": False,
    }
    status, body = await post_json(lb, "/sdapi/v1/img2img", payload)
    assert status == 200, body
    out = np.asarray(decode_png(body["images"][0]).convert("RGB")).astype(int)
    original = np.asarray(init).astype(int)
    # Inverted: the black (right) half is repainted, the white (left) half is kept exactly.
    assert np.array_equal(out[:, : SIZE // 2], original[:, : SIZE // 2])
    assert np.abs(out[:, SIZE // 2 + 2 :] - original[:, SIZE // 2 + 2 :]).mean() > 5
    info = json.loads(body["info"])
    assert info["denoising_strength"] == 0.9 and info["is_using_inpainting_conditioning"] is True
    assert "Denoising strength: 0.9" in info["infotexts"][0]
    assert body["parameters"]["init_images"] is None and body["parameters"]["mask"] is None


async def test_img2img_plain_base64_jpeg_is_resized(lb):
    init = gradient(96, 64)
    status, body = await post_json(lb, "/sdapi/v1/img2img", {
        "init_images": [b64(png_bytes(init, "JPEG"))], "prompt": "x", "seed": 3, "steps": 2,
        "width": SIZE, "height": SIZE, "resize_mode": 1, "denoising_strength": 0.5})
    assert status == 200, body
    assert decode_png(body["images"][0]).size == (SIZE, SIZE)
    assert json.loads(body["info"])["denoising_strength"] == 0.5


async def test_progress_while_running_then_interrupt(lb):
    idle = await (await lb.get("/sdapi/v1/progress")).json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None

    call = asyncio.create_task(post_json(lb, "/sdapi/v1/txt2img", {
        "prompt": "slow", "seed": 5, "steps": 150, "n_iter": 3, "width": SIZE, "height": SIZE}))
    seen = None
    for _ in range(400):
        seen = await (await lb.get("/sdapi/v1/progress")).json()
        if seen["state"]["sampling_step"] >= 2 and seen["current_image"]:
            break
        await asyncio.sleep(0.02)
    assert seen["state"]["job"] == "Batch 1 out of 3" and seen["state"]["job_count"] == 3
    assert seen["state"]["sampling_steps"] == 150 and seen["state"]["sampling_step"] >= 2
    assert 0 < seen["progress"] < 1 / 3 and seen["eta_relative"] > 0
    assert decode_png(seen["current_image"]).size[0] > 0
    skipped = await (await lb.get("/sdapi/v1/progress?skip_current_image=true")).json()
    assert skipped["current_image"] is None

    resp = await lb.post("/sdapi/v1/interrupt")
    assert resp.status == 200 and await resp.json() == {}
    status, body = await asyncio.wait_for(call, 30)
    # Interrupted on the first of three iterations: the call returns at once, with no images,
    # and does not go on with the other iterations.
    assert status == 200 and body["images"] == []
    history = lb.server.app[JOBS_KEY].history(10)
    assert [h.state for h in history] == [JobState.cancelled]
    idle = await (await lb.get("/sdapi/v1/progress")).json()
    assert idle["progress"] == 0 and idle["state"]["job"] == ""


async def test_client_disconnect_cancels_its_job(lb):
    call = asyncio.create_task(lb.post("/sdapi/v1/txt2img", json={
        "prompt": "abandoned", "steps": 150, "width": SIZE, "height": SIZE}))
    jobs = lb.server.app[JOBS_KEY]
    for _ in range(400):
        if jobs.current_job is not None and jobs.current_job.step >= 1:
            break
        await asyncio.sleep(0.02)
    job = jobs.current_job
    assert job is not None
    call.cancel()  # the HTTP client goes away mid-generation
    await asyncio.gather(call, return_exceptions=True)
    for _ in range(200):
        if job.state.finished:
            break
        await asyncio.sleep(0.02)
    assert job.state is JobState.cancelled


BAD = [
    ("txt2img", {"steps": 1000}, "invalid_request", "steps"),
    ("txt2img", {"cfg_scale": 99}, "invalid_request", "cfg_scale"),
    ("txt2img", {"sampler_name": "DDIM", "scheduler": "Karras"}, "unsupported", "scheduler"),
    ("txt2img", {"sampler_name": "LCM", "scheduler": "Exponential"}, "unsupported", "scheduler"),
    ("txt2img", {"scheduler": "Align Your Steps"}, "unsupported", "scheduler"),
    ("txt2img", {"width": 40}, "invalid_request", "width"),
    ("txt2img", {"seed": "abc"}, "invalid_request", "seed"),
    ("txt2img", {"seed": -5}, "invalid_request", "seed"),
    ("txt2img", {"batch_size": 100}, "invalid_request", "batch_size"),
    ("txt2img", {"n_iter": 0}, "invalid_request", "n_iter"),
    ("txt2img", {"enable_hr": True, "hr_scale": 99}, "invalid_request", "hr_scale"),
    ("txt2img", {"enable_hr": True, "hr_upscaler": "4x-NoSuchModel"}, "invalid_request", "hr_upscaler"),
    ("txt2img", {"restore_faces": True}, "unsupported", "restore_faces"),
    ("txt2img", {"subseed_strength": 0.5}, "unsupported", "subseed_strength"),
    ("txt2img", {"prompt": "a <hypernet:anime:1>"}, "unsupported", "prompt"),
    ("txt2img", {"prompt": "a <lora:missing:0.5>"}, "invalid_request", "prompt"),
    ("txt2img", [1, 2], "invalid_request", "body"),
    ("img2img", {"init_images": ["data:image/png;base64,!!!not base64"]}, "bad_image", "init_images"),
    ("img2img", {"init_images": [b64(b"definitely not an image")]}, "bad_image", "init_images"),
    ("img2img", {"init_images": ["https://example.com/a.png"]}, "unsupported", "init_images"),
    ("img2img", {"init_images": [b64(png_bytes(gradient()))], "mask": b64(png_bytes(gradient())[:40])},
     "bad_image", "mask"),
    ("img2img", {"init_images": [b64(png_bytes(gradient()))], "denoising_strength": 1.5},
     "invalid_request", "denoising_strength"),
    ("img2img", {"init_images": [b64(png_bytes(gradient()))], "inpainting_fill": 7}, "invalid_request",
     "inpainting_fill"),
]


async def test_bad_payloads_get_typed_422_and_server_keeps_serving(lb):
    for route, payload, code, field in BAD:
        if isinstance(payload, dict):
            payload = {"width": SIZE, "height": SIZE, "steps": 2, **payload}
        status, body = await post_json(lb, f"/sdapi/v1/{route}", payload)
        assert (status, body["code"], body["field"]) == (422, code, field), (route, payload, body)
        assert body["type"] == "error"
        if isinstance(body["detail"], list):  # a body that does not validate: FastAPI's error list
            assert body["detail"][0]["loc"][0] == "body" and body["detail"][0]["msg"] and body["detail"][0]["type"]
        else:
            assert body["detail"] == body["message"]
    resp = await lb.post("/sdapi/v1/txt2img", data=b"{not json", headers={"Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == 422 and body["code"] == "bad_message"
    status, body = await post_json(lb, "/sdapi/v1/txt2img", {"prompt": "still fine", "steps": 2,
                                                            "width": SIZE, "height": SIZE})
    assert status == 200 and len(body["images"]) == 1


async def test_security_applies_to_a1111_routes(aiohttp_client, tmp_path):
    settings = load_settings(environ={}, model="tiny", data_dir=tmp_path / "data", token="s3cret")
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/sdapi/v1/samplers")
    assert resp.status == 401
    auth = {"Authorization": "Bearer s3cret"}
    resp = await client.get("/sdapi/v1/samplers", headers=auth)
    assert resp.status == 200
    resp = await client.post("/sdapi/v1/txt2img", json={"prompt": "x"},
                             headers={**auth, "Origin": "http://evil.example"})
    assert resp.status == 403


def test_sampler_names_as_a1111_spells_them():
    # Automatic is A1111's choice for the sampler: evenly spread timesteps for Euler and friends,
    # Karras for DPM++ 2M, exponential for the SDE samplers; the model's own for DDIM/PLMS/UniPC.
    assert resolve_sampler("Euler a", None) == (Sampler.euler_a, Schedule.linspace)
    assert resolve_sampler(None, None) == (Sampler.euler, Schedule.linspace)  # A1111's default sampler_index
    assert resolve_sampler("k_euler_a", "")[0] is Sampler.euler_a
    assert resolve_sampler("euler A", "Automatic")[0] is Sampler.euler_a
    assert resolve_sampler("DPM++ 2M", None) == (Sampler.dpmpp_2m, Schedule.karras)
    assert resolve_sampler("DPM++ 2M", "Uniform") == (Sampler.dpmpp_2m, Schedule.linspace)
    assert resolve_sampler("DPM++ 2M Karras", None) == (Sampler.dpmpp_2m, Schedule.karras)
    assert resolve_sampler("DPM++ 2M SDE", "automatic") == (Sampler.dpmpp_2m_sde, Schedule.exponential)
    assert resolve_sampler("DPM++ 2M SDE Karras", None) == (Sampler.dpmpp_2m_sde, Schedule.karras)
    assert resolve_sampler("DPM++ SDE", "karras") == (Sampler.dpmpp_sde, Schedule.karras)
    assert resolve_sampler("Euler", "SGM Uniform") == (Sampler.euler, Schedule.trailing)
    assert resolve_sampler("Euler", "SGMUniform") == (Sampler.euler, Schedule.trailing)
    assert resolve_sampler("LMS Karras", None) == (Sampler.lms, Schedule.karras)
    assert resolve_sampler("DDIM", None) == (Sampler.ddim, Schedule.default)
    assert resolve_sampler("DDIM", "DDIM") == (Sampler.ddim, Schedule.leading)
    assert resolve_sampler("PLMS", None)[0] is Sampler.pndm
    assert resolve_sampler("UniPC", "Beta") == (Sampler.unipc, Schedule.beta)
    assert resolve_sampler("LCM", None)[0] is Sampler.lcm
    assert resolve_sampler("Euler", "no such scheduler") == (Sampler.euler, Schedule.linspace)  # A1111: Automatic
    for name in ("DPM fast", "DPM adaptive", "Restart", "DDIM CFG++", "Nonexistent"):
        with pytest.raises(A1111Error) as err:
            resolve_sampler(name, None)
        assert (err.value.status, err.value.detail, err.value.field) == (404, "Sampler not found", "sampler_name")
    with pytest.raises(Unsupported) as err:
        resolve_sampler("Euler", "KL Optimal")
    assert err.value.field == "scheduler"
    # Bound to what the loaded model can do: a sampler it cannot use is "not found".
    with pytest.raises(A1111Error):
        resolve_sampler("DDIM", None, usable=[Sampler.euler, Sampler.euler_a])


def test_inpainting_fill_modes_touch_only_the_masked_area():
    image = Image.new("RGB", (32, 32), (200, 40, 40))
    image.paste((0, 0, 0), (8, 8, 24, 24))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    filled = np.asarray(apply_inpainting_fill(image, mask, 0)).astype(int)
    keep = np.asarray(mask) == 0
    assert np.array_equal(filled[keep], np.asarray(image).astype(int)[keep])
    # The hole takes the colour around it (here uniform), not the black that was there.
    assert np.abs(filled[16, 16] - np.array([200, 40, 40])).max() <= 2
    grey = np.asarray(apply_inpainting_fill(image, mask, 3))
    assert tuple(grey[16, 16]) == (128, 128, 128) and tuple(grey[0, 0]) == (200, 40, 40)
    assert apply_inpainting_fill(image, mask, 1) is image


def test_progress_image_is_png_whatever_the_preview_format():
    """/progress `current_image` is a PNG for A1111 clients, from a JPEG or a raw preview."""
    from latentbridge.jobs import PreviewFrame
    from latentbridge.server.a1111 import _png_b64

    picture = Image.new("RGB", (6, 4), (250, 10, 20))
    for fmt in ("jpeg", "rgb"):
        frame = PreviewFrame("j", 1, 2, 6, 4, image_utils.encode_preview(picture, 64, fmt), fmt)
        decoded = Image.open(io.BytesIO(base64.b64decode(_png_b64(frame))))
        assert decoded.format == "PNG" and decoded.size == (6, 4)
        assert np.abs(np.asarray(decoded.convert("RGB"), np.int16) - (250, 10, 20)).max() < 12
