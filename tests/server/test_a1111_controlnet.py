"""sd-webui-controlnet's API (alwayson_scripts.controlnet and /controlnet/*) through the real server
with the tiny model and the built-in random ControlNet / IP-Adapter: units become our controls and
reference images, maps come from our preprocessors, bad units get typed answers naming the field."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from a1111_helpers import call, decode, gradient, info, pixels, png_b64, txt2img
from PIL import Image, ImageDraw

from latentbridge.server.app import JOBS_KEY

SIZE = 64
ARGS = "alwayson_scripts.controlnet.args"


def shapes() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (20, 20, 20))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 40, 50), fill=(230, 230, 230))
    draw.ellipse((30, 5, 60, 35), fill=(120, 200, 60))
    return image


def unit(**fields):
    values = {"enabled": True, "module": "none", "model": "tiny-controlnet", "image": png_b64(shapes())}
    values.update(fields)
    return values


def with_units(*units, key="controlnet", **fields):
    return txt2img(alwayson_scripts={key: {"args": list(units)}}, **fields)


async def test_routes_list_models_modules_types_and_settings(client):
    status, body = await call(client, "GET", "/controlnet/version")
    assert (status, body) == (200, {"version": 3})
    _, models = await call(client, "GET", "/controlnet/model_list?update=true")
    titles = models["model_list"]
    assert any(t.startswith("tiny-controlnet [") and len(t.split("[")[1]) == 9 for t in titles)
    assert any(t.startswith("tiny-ip-adapter [") for t in titles)
    _, modules = await call(client, "GET", "/controlnet/module_list")
    names = modules["module_list"]
    assert names[0] == "none" and {"canny", "invert", "scribble_xdog", "lineart_standard", "ip-adapter_clip_sd15"} <= set(names)
    assert "depth" not in names  # no --depth-estimator on this server
    canny = modules["module_detail"]["canny"]["sliders"]
    assert [s["name"] for s in canny] == ["Resolution", "Low Threshold", "High Threshold"]
    assert canny[1] == {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1.0}
    _, aliases = await call(client, "GET", "/controlnet/module_list?alias_names=true")
    assert "invert (from white bg & black line)" in aliases["module_list"] and "ip-adapter_clip_h" in aliases["module_list"]
    _, types = await call(client, "GET", "/controlnet/control_types")
    canny_type = types["control_types"]["Canny"]
    assert canny_type["default_option"] == "canny" and canny_type["model_list"][0] == "None"
    assert any(t.startswith("tiny-controlnet [") for t in canny_type["model_list"])
    assert all(t.startswith("tiny-ip-adapter") for t in types["control_types"]["IP-Adapter"]["model_list"][1:])
    assert (await call(client, "GET", "/controlnet/settings"))[1] == {"control_net_unit_count": 4}
    _, scripts = await call(client, "GET", "/sdapi/v1/scripts")
    assert scripts == {"txt2img": ["controlnet"], "img2img": ["controlnet"]}
    _, script_info = await call(client, "GET", "/sdapi/v1/script-info")
    assert [(s["name"], s["is_alwayson"], s["is_img2img"]) for s in script_info] == [("controlnet", True, False),
                                                                                    ("controlnet", True, True)]


async def test_the_routes_take_the_servers_token(make_client):
    client = await make_client(token="s3cret-token")
    assert (await call(client, "GET", "/controlnet/model_list"))[0] == 401
    status, body = await call(client, "GET", "/controlnet/module_list", headers={"Authorization": "Bearer s3cret-token"})
    assert status == 200 and body["module_list"][0] == "none"


async def _stored(client, job_id: str, role: str) -> np.ndarray:
    resp = await client.get(f"/api/v1/jobs/{job_id}/inputs/{role}")
    assert resp.status == 200, role
    return np.asarray(Image.open(io.BytesIO(await resp.read())).convert("RGB"))


async def _last_job(client) -> dict:
    _, jobs = await call(client, "GET", "/api/v1/jobs")
    items = jobs["jobs"] if isinstance(jobs, dict) else jobs
    return items[0]


async def test_txt2img_units_run_our_controlnet_with_the_extensions_maps_and_infotext(client):
    status, plain = await call(client, "POST", "/sdapi/v1/txt2img", txt2img())
    assert status == 200 and len(plain["images"]) == 1
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", with_units(
        unit(module="canny", threshold_a=50, threshold_b=150, processor_res=64, resize_mode="Just Resize")))
    assert status == 200 and len(body["images"]) == 2  # the image, then the detected map (as the extension)
    image, detected = decode(body["images"][0]), decode(body["images"][1])
    expected = cv2.Canny(np.asarray(shapes()), 50, 150)
    assert np.array_equal(pixels(detected)[..., 0], expected) and set(np.unique(expected)) == {0, 255}
    assert np.abs(pixels(image) - pixels(decode(plain["images"][0]))).mean() > 1  # the control changed the picture
    text = info(body)["infotexts"][0]
    assert ('ControlNet 0: "Module: canny, Model: tiny-controlnet, Weight: 1.0, Resize Mode: Just Resize, '
            'Processor Res: 64, Threshold A: 50.0, Threshold B: 150.0, Guidance Start: 0.0, Guidance End: 1.0, '
            'Pixel Perfect: False, Control Mode: Balanced"') in text
    assert image.info["parameters"] == text and "ControlNet 0" in info(body)["extra_generation_params"]
    job = await _last_job(client)
    assert [c["type"] for c in job["request"]["controls"]] == ["canny"]
    assert np.array_equal(await _stored(client, job["job_id"], "control.0"), pixels(detected).astype(np.uint8))
    # Weight 0 gives exactly the picture without the unit.
    _, zero = await call(client, "POST", "/sdapi/v1/txt2img", with_units(unit(module="canny", weight=0)))
    assert np.array_equal(pixels(decode(zero["images"][0])), pixels(decode(plain["images"][0])))


async def test_two_units_control_modes_disabled_units_and_the_flat_form(client):
    first = unit(module="invert", control_mode=2, guidance_end=0.5)
    second = unit(module="scribble_xdog", threshold_a=20, weight=0.7, control_mode="My prompt is more important",
                  resize_mode=2, save_detected_map=False)
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", with_units(first, second, unit(enabled=False,
                                                                                              module="no-such")))
    assert status == 200 and len(body["images"]) == 2  # the second unit's map is not returned
    job = await _last_job(client)
    controls = job["request"]["controls"]
    assert [(c["mode"], c["weight"], c["end"]) for c in controls] == [("control", 1.0, 0.5), ("prompt", 0.7, 1.0)]
    assert "ControlNet 1" in info(body)["infotexts"][0] and "ControlNet 2" not in info(body)["infotexts"][0]
    # The same units without the disabled one: the same picture.
    _, again = await call(client, "POST", "/sdapi/v1/txt2img", with_units(first, second, key="ControlNet"))
    assert np.array_equal(pixels(decode(again["images"][0])), pixels(decode(body["images"][0])))
    # The 2023 flat form: 15 positional values per unit.
    flat = [True, "canny", "tiny-controlnet", 1.0, png_b64(shapes()), "Just Resize", False, 64, 50, 150, 0.0, 1.0,
            False, False, "Balanced"]
    _, from_flat = await call(client, "POST", "/sdapi/v1/txt2img", with_units(*flat))
    _, from_dict = await call(client, "POST", "/sdapi/v1/txt2img", with_units(
        unit(module="canny", threshold_a=50, threshold_b=150, processor_res=64, resize_mode=0)))
    assert np.array_equal(pixels(decode(from_flat["images"][0])), pixels(decode(from_dict["images"][0])))
    # webuiapi's "nothing for ControlNet" workaround: empty args, a plain generation.
    status, empty = await call(client, "POST", "/sdapi/v1/txt2img", with_units(key="ControlNet"))
    assert status == 200 and len(empty["images"]) == 1


async def test_hires_fix_with_a_unit_controls_both_passes_at_the_final_size(client):
    hires = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (bicubic)", hr_second_pass_steps=2,
                 denoising_strength=0.5)
    status, plain = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(**hires))
    assert status == 200
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", with_units(unit(module="invert"), **hires))
    assert status == 200
    image = decode(body["images"][0])
    assert image.size == (96, 96) == decode(plain["images"][0]).size  # 64 × 1.5
    assert np.abs(pixels(image) - pixels(decode(plain["images"][0]))).mean() > 1  # the control changed it
    job = await _last_job(client)
    assert job["request"]["hires"] is not None and len(job["request"]["controls"]) == 1
    # Reproducible: the same call, the same pixels.
    _, again = await call(client, "POST", "/sdapi/v1/txt2img", with_units(unit(module="invert"), **hires))
    assert np.array_equal(pixels(decode(again["images"][0])), pixels(image))


async def test_img2img_unit_without_image_uses_the_init_image_and_ip_adapter_units_are_references(client):
    init = png_b64(gradient())
    payload = txt2img(init_images=[init], denoising_strength=0.8,
                      alwayson_scripts={"controlnet": {"args": [unit(image="", module="canny", resize_mode=1)]}})
    status, body = await call(client, "POST", "/sdapi/v1/img2img", payload)
    assert status == 200 and len(body["images"]) == 2
    job = await _last_job(client)
    expected = cv2.Canny(np.asarray(gradient().resize((512, 512), Image.Resampling.LANCZOS)), 100, 200)
    assert job["request"]["mode"] == "img2img" and job["request"]["controls"][0]["type"] == "canny"
    assert np.array_equal(pixels(decode(body["images"][1]))[..., 0],
                          np.asarray(Image.fromarray(expected).resize((SIZE, SIZE), Image.Resampling.LANCZOS)))
    # An IP-Adapter unit: the request's reference images (no map is returned for it).
    _, plain = await call(client, "POST", "/sdapi/v1/txt2img", txt2img())
    ip = unit(module="ip-adapter_clip_sd15", model="tiny-ip-adapter", weight=0.8, image=png_b64(shapes()))
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", with_units(ip))
    assert status == 200 and len(body["images"]) == 1
    job = await _last_job(client)
    assert job["request"]["reference"] == {"images": 1, "weight": 0.8, "model": "tiny-ip-adapter"}
    assert np.array_equal(await _stored(client, job["job_id"], "reference.0"), np.asarray(shapes()))
    assert np.abs(pixels(decode(body["images"][0])) - pixels(decode(plain["images"][0]))).mean() > 0.5
    assert 'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: tiny-ip-adapter' in info(body)["infotexts"][0]


@pytest.mark.parametrize(("bad", "status", "detail", "where"), [
    ({"module": "depth_leres"}, 422, "module(depth_leres) not found in supported modules.", "module"),
    ({"module": "depth_midas"}, 422, "module(depth_midas) not found in supported modules.", "module"),
    ({"model": "control_v11p_sd15_canny [d14c016b]"}, 404, "model not found: control_v11p_sd15_canny [d14c016b]", "model"),
    ({"model": "None"}, 422, "You have not selected any ControlNet Model.", "model"),
    ({"image": None}, 422, "controlnet is enabled but no input image is given", "image"),
    ({"image": "not base64 at all!"}, 422, None, "image"),
    ({"weight": 3}, 422, None, "weight"),
    ({"control_mode": "Loud"}, 422, None, "control_mode"),
    ({"resize_mode": "Stretch"}, 422, None, "resize_mode"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, 422, None, "guidance_start"),
    ({"module": "ip-adapter_clip_sd15"}, 422, None, "model"),
    ({"advanced_weighting": [1.0] * 13}, 422, None, "advanced_weighting"),
])
async def test_bad_units_are_answered_naming_the_field_and_nothing_runs(client, bad, status, detail, where):
    jobs = client.server.app[JOBS_KEY]
    before = len(jobs.history(1000))
    got, body = await call(client, "POST", "/sdapi/v1/txt2img", with_units(unit(module="canny"), unit(**bad)))
    assert got == status and body["field"] == f"{ARGS}.1.{where}" and body["type"] == "error", body
    if detail is not None:
        assert body["detail"] == detail
    assert len(jobs.history(1000)) == before  # refused before anything was queued
    status, ok = await call(client, "POST", "/sdapi/v1/txt2img", txt2img())  # still serving
    assert status == 200 and len(ok["images"]) == 1


async def test_a_controlnet_of_another_family_fails_as_a_job_naming_the_unit(client):
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", with_units(
        unit(module="canny"), unit(module="canny", model="tiny-controlnet-sdxl")))
    assert (status, body["code"]) == (422, "unsupported") and body["field"] == f"{ARGS}.1.model" and "sdxl" in body["message"].lower(), body
    status, ok = await call(client, "POST", "/sdapi/v1/txt2img", txt2img())
    assert status == 200 and len(ok["images"]) == 1


async def test_detect_runs_our_preprocessors_and_answers_as_the_extension(client):
    image = shapes()
    status, body = await call(client, "POST", "/controlnet/detect", {
        "controlnet_module": "canny", "controlnet_input_images": [png_b64(image)], "controlnet_processor_res": 64,
        "controlnet_threshold_a": 40, "controlnet_threshold_b": 120})
    assert status == 200 and body["info"] == "Success" and len(body["images"]) == 1
    assert np.array_equal(pixels(decode(body["images"][0]))[..., 0], cv2.Canny(np.asarray(image), 40, 120))
    _, scaled = await call(client, "POST", "/controlnet/detect", {"controlnet_module": "canny",
                                                                  "controlnet_input_images": [png_b64(image)]})
    assert decode(scaled["images"][0]).size == (512, 512)  # the default processor resolution: short side 512
    _, inverted = await call(client, "POST", "/controlnet/detect", {"controlnet_module": "invert (from white bg & black line)",
                                                                    "controlnet_input_images": [png_b64(image)] * 2})
    assert len(inverted["images"]) == 2 and np.array_equal(pixels(decode(inverted["images"][1])), 255 - pixels(image))
    for payload, detail, field in (
            ({"controlnet_module": "openpose", "controlnet_input_images": [png_b64(image)]}, "Module not available",
             "controlnet_module"),
            ({"controlnet_module": "ip-adapter_clip_sd15", "controlnet_input_images": [png_b64(image)]},
             "Module not supported", "controlnet_module"),
            ({"controlnet_module": "canny"}, "No image selected", "controlnet_input_images")):
        status, error = await call(client, "POST", "/controlnet/detect", payload)
        assert (status, error["detail"], error["field"]) == (422, detail, field)
    status, error = await call(client, "POST", "/controlnet/detect", {"controlnet_module": "canny",
                                                                      "controlnet_input_images": ["%%%"]})
    assert status == 422 and error["code"] == "bad_image" and error["field"] == "controlnet_input_images.0"


async def test_depth_modules_run_the_servers_depth_estimator(make_client, tiny_engine, monkeypatch):
    monkeypatch.setattr(tiny_engine.settings, "depth_estimator", "tiny-depth")
    client = await make_client(depth_estimator="tiny-depth")
    _, modules = await call(client, "GET", "/controlnet/module_list?alias_names=1")
    assert {"depth_midas", "depth_anything", "normal_midas"} <= set(modules["module_list"])
    status, body = await call(client, "POST", "/controlnet/detect", {
        "controlnet_module": "depth_midas", "controlnet_input_images": [png_b64(shapes())], "controlnet_processor_res": 64})
    assert status == 200
    depth = pixels(decode(body["images"][0]))
    assert depth.shape == (SIZE, SIZE, 3) and depth.max() == 255 and depth.min() == 0  # normalised, near white
    status, gen = await call(client, "POST", "/sdapi/v1/txt2img", with_units(
        unit(module="normal_map", threshold_a=0.2, processor_res=64, resize_mode=0)))
    assert status == 200 and len(gen["images"]) == 2
    assert 'Module: normal_map' in info(gen)["infotexts"][0] and "Threshold A: 0.2" in info(gen)["infotexts"][0]


async def test_segmentation_modules_run_the_servers_segmentation_estimator(make_client, tiny_engine, monkeypatch):
    from latentbridge.engine import ade20k

    _, plain = await call(await make_client(), "GET", "/controlnet/module_list")
    assert "seg_ofade20k" not in plain["module_list"]  # no estimator: not offered
    monkeypatch.setattr(tiny_engine.settings, "segmentation_estimator", "tiny-segmentation")
    client = await make_client(segmentation_estimator="tiny-segmentation")
    _, modules = await call(client, "GET", "/controlnet/module_list")
    assert {"seg_ofade20k", "seg_ufade20k"} <= set(modules["module_list"])
    assert modules["module_detail"]["seg_ofade20k"]["sliders"] == []  # as the extension: no resolution slider
    assert [s["name"] for s in modules["module_detail"]["seg_ufade20k"]["sliders"]] == ["Resolution"]
    _, types = await call(client, "GET", "/controlnet/control_types")
    assert types["control_types"]["Segmentation"]["default_option"] == "seg_ofade20k"
    status, body = await call(client, "POST", "/controlnet/detect", {
        "controlnet_module": "seg_ufade20k", "controlnet_input_images": [png_b64(shapes())],
        "controlnet_processor_res": 64})
    assert status == 200
    seg = pixels(decode(body["images"][0]))
    palette = {tuple(c) for c in ade20k.PALETTE[1:]}
    assert seg.shape == (SIZE, SIZE, 3) and {tuple(c) for c in seg.reshape(-1, 3)} <= palette  # ADE20K colours only
    status, gen = await call(client, "POST", "/sdapi/v1/txt2img", with_units(unit(module="seg_ofade20k")))
    assert status == 200 and len(gen["images"]) == 2
    assert "Module: seg_ofade20k" in info(gen)["infotexts"][0]


# ---------------------------------------------------------------------------------------------
# The model-free modules (tile, blur, threshold, binary, colour grid, shuffle, recolor)


async def test_model_free_modules_are_listed_with_the_extensions_sliders(client):
    _, modules = await call(client, "GET", "/controlnet/module_list")
    names, detail = modules["module_list"], modules["module_detail"]
    assert {"tile_resample", "blur_gaussian", "threshold", "binary", "color", "shuffle", "recolor_luminance",
            "recolor_intensity"} <= set(names)
    assert detail["tile_resample"]["sliders"] == [
        {"name": "Down Sampling Rate", "value": 1.0, "min": 1.0, "max": 8.0, "step": 0.01}]  # no resolution slider
    assert [s["name"] for s in detail["blur_gaussian"]["sliders"]] == ["Resolution", "Sigma"]
    assert detail["blur_gaussian"]["sliders"][1]["value"] == 9.0
    assert detail["threshold"]["sliders"][1] == {"name": "Binarization Threshold", "value": 127, "min": 0, "max": 255,
                                                 "step": 1.0}
    assert detail["binary"]["sliders"][1]["value"] == 0
    assert detail["shuffle"]["sliders"] == [] and [s["name"] for s in detail["color"]["sliders"]] == ["Resolution"]
    assert detail["recolor_luminance"]["sliders"] == [
        {"name": "Gamma Correction", "value": 1.0, "min": 0.1, "max": 2.0, "step": 0.001}]
    _, aliases = await call(client, "GET", "/controlnet/module_list?alias_names=true")
    assert "t2ia_color_grid" in aliases["module_list"] and "color" not in aliases["module_list"]
    _, types = await call(client, "GET", "/controlnet/control_types")
    tile = types["control_types"]["Tile"]
    assert tile["default_option"] == "tile_resample" and "blur_gaussian" in tile["module_list"]
    assert types["control_types"]["Recolor"]["default_option"] == "recolor_luminance"


async def test_a_tile_resample_unit_runs_the_tile_controlnet_on_the_shrunk_map(client):
    status, plain = await call(client, "POST", "/sdapi/v1/txt2img", txt2img())
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", with_units(
        unit(module="tile_resample", threshold_a=2.0, resize_mode="Just Resize")))
    assert status == 200 and len(body["images"]) == 2
    shrunk = cv2.resize(np.asarray(shapes()), (SIZE // 2, SIZE // 2), interpolation=cv2.INTER_AREA)
    expected = np.asarray(Image.fromarray(shrunk).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    assert np.array_equal(pixels(decode(body["images"][1])), expected)  # shrunk, then fitted to the output
    assert np.abs(pixels(decode(body["images"][0])) - pixels(decode(plain["images"][0]))).mean() > 1
    job = await _last_job(client)
    assert job["request"]["controls"][0]["type"] == "tile"
    assert "Module: tile_resample" in info(body)["infotexts"][0] and "Threshold A: 2.0" in info(body)["infotexts"][0]


async def test_tile_upscale_img2img_takes_the_init_image_as_the_tile_input(client):
    """The "ControlNet tile upscale" workflow: img2img to twice the size, the unit without an image."""
    init = gradient()
    payload = txt2img(init_images=[png_b64(init)], denoising_strength=0.6, width=2 * SIZE, height=2 * SIZE,
                      alwayson_scripts={"controlnet": {"args": [unit(image="", module="tile_resample", threshold_a=1.0)]}})
    status, body = await call(client, "POST", "/sdapi/v1/img2img", payload)
    assert status == 200 and len(body["images"]) == 2
    assert decode(body["images"][0]).size == (2 * SIZE, 2 * SIZE)
    expected = np.asarray(init.resize((2 * SIZE, 2 * SIZE), Image.Resampling.LANCZOS))  # rate 1: the image itself
    assert np.array_equal(pixels(decode(body["images"][1])), expected)


async def test_shuffle_units_draw_from_the_calls_seed(client):
    async def detected(seed):
        _, body = await call(client, "POST", "/sdapi/v1/txt2img", with_units(unit(module="shuffle"), seed=seed))
        return pixels(decode(body["images"][1]))

    first = await detected(7)
    assert np.array_equal(first, await detected(7)) and not np.array_equal(first, await detected(8))


async def test_detect_runs_the_model_free_modules(client):
    image = shapes()

    async def detect(module, **fields):
        status, body = await call(client, "POST", "/controlnet/detect", {
            "controlnet_module": module, "controlnet_input_images": [png_b64(image)], **fields})
        assert status == 200 and body["info"] == "Success", body
        return pixels(decode(body["images"][0]))

    tile = await detect("tile_resample", controlnet_threshold_a=4)
    assert tile.shape == (SIZE // 4, SIZE // 4, 3)  # the extension's tile_resample returns the smaller image
    assert np.array_equal(tile, cv2.resize(np.asarray(image), (16, 16), interpolation=cv2.INTER_AREA))
    assert (await detect("tile_resample", controlnet_threshold_a=99)).shape == (SIZE, SIZE, 3)  # out of range: 1
    binary = await detect("binary", controlnet_processor_res=64, controlnet_threshold_a=100)
    expected = np.where(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY) <= 100, 255, 0)
    assert np.array_equal(binary[..., 0], expected)
    blur = await detect("blur_gaussian", controlnet_processor_res=64, controlnet_threshold_a=2.5)
    assert np.array_equal(blur, cv2.GaussianBlur(np.asarray(image), (0, 0), 2.5))
    grey = await detect("recolor_intensity")
    assert grey.shape == (SIZE, SIZE, 3) and np.array_equal(grey[..., 0], np.asarray(image).max(axis=2))
    grid = await detect("t2ia_color_grid", controlnet_processor_res=128)
    assert grid.shape == (128, 128, 3) and len(np.unique(grid.reshape(-1, 3), axis=0)) <= 4  # 2 x 2 cells
    assert np.array_equal(await detect("shuffle"), await detect("shuffle"))  # no seed in a detect call: seed 0
