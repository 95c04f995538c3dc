"""A1111's options, model titles and hashes, model switching and error shapes, on the real app."""

from __future__ import annotations

import asyncio

import pytest
from a1111_helpers import call, info, txt2img

from latentbridge.engine import Engine, tiny
from latentbridge.model_hash import HashCache, name_hash
from latentbridge.server.a1111.option_defaults import OPTION_DEFAULTS
from latentbridge.server.app import create_app


async def test_options_answer_every_a1111_key_and_what_is_set_persists(aiohttp_client, tiny_engine, make_settings):
    settings = make_settings()
    client = await aiohttp_client(create_app(settings, tiny_engine))
    status, options = await call(client, "GET", "/sdapi/v1/options")
    assert status == 200 and set(options) == set(OPTION_DEFAULTS)
    assert options["sd_model_checkpoint"] == f"tiny [{name_hash('tiny')[:10]}]"
    assert options["sd_checkpoint_hash"] == name_hash("tiny") and options["randn_source"] == "CPU"
    status, body = await call(client, "POST", "/sdapi/v1/options", {
        "CLIP_stop_at_last_layers": 2, "samples_format": "jpg", "jpeg_quality": 90.0,
        "control_net_unit_count": 3, "sd_model_checkpoint": options["sd_model_checkpoint"]})
    assert (status, body) == (200, None)
    # A new app on the same data folder (a restart) answers what was set, extension keys too.
    restarted = await aiohttp_client(create_app(settings, tiny_engine))
    _, again = await call(restarted, "GET", "/sdapi/v1/options")
    assert (again["CLIP_stop_at_last_layers"], again["samples_format"], again["control_net_unit_count"]) == (2, "jpg", 3)
    assert again["jpeg_quality"] == 90


@pytest.mark.parametrize("raw, field", [
    # Not JSON at all: the strict reader refuses the body before any option is looked at.
    (b'{"jpeg_quality": NaN}', "body"),
    (b'{"sigma_min": Infinity}', "body"),
    (b'{"extension_thing": [1, -Infinity]}', "body"),
    (b'{"live_previews_enable": "yes"}', "live_previews_enable"),
    (b'{"CLIP_stop_at_last_layers": 1.5}', "CLIP_stop_at_last_layers"),
    (b'{"sd_model_checkpoint": "../../etc/passwd [abc123]"}', "sd_model_checkpoint"),
    (b'[1, 2]', "body"),
])
async def test_invalid_options_are_refused_and_change_nothing(client, raw, field):
    resp = await client.post("/sdapi/v1/options", data=raw, headers={"Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status in (404, 422) and body["field"] == field and body["detail"], body
    _, options = await call(client, "GET", "/sdapi/v1/options")
    assert options["jpeg_quality"] == 80 and options["sd_model_checkpoint"].startswith("tiny [")


async def test_checkpoints_are_titled_with_their_hash_and_switch_by_any_a1111_name(aiohttp_client, make_settings, tmp_path):
    models = tmp_path / "models"
    tiny.build_pipeline("tiny").save_pretrained(models / "tinyfolder")
    settings = make_settings(model_dirs=[models])
    engine = Engine(settings)  # its own engine: this test switches models
    client = await aiohttp_client(create_app(settings, engine))
    for _ in range(600):
        if engine.status.state.value == "ready":
            break
        await asyncio.sleep(0.05)
    for _ in range(600):  # the folders' models are hashed in the background once the model is up
        _, listed = await call(client, "GET", "/sdapi/v1/sd-models")
        if listed[-1]["sha256"]:
            break
        await asyncio.sleep(0.05)
    assert [m["model_name"] for m in listed] == ["tiny", "tinyfolder"]
    folder = listed[1]
    assert folder["filename"] == str(models / "tinyfolder")
    assert folder["sha256"] == HashCache(None).digest(models / "tinyfolder")  # a digest of its weight files
    assert folder["title"] == f"tinyfolder [{folder['sha256'][:10]}]" and folder["hash"] == folder["sha256"][:10]
    assert listed[0]["title"] == f"tiny [{name_hash('tiny')[:10]}]"
    # Switch to a built-in by title, then back by the plain name; GET answers the new title.
    status, _ = await call(client, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "tiny-sdxl"})
    assert status == 200 and engine.status.name == "tiny-sdxl"
    _, options = await call(client, "GET", "/sdapi/v1/options")
    assert options["sd_model_checkpoint"] == f"tiny-sdxl [{name_hash('tiny-sdxl')[:10]}]"
    # A call's override uses another model for that call only; the selected one comes back after.
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(
        override_settings={"sd_model_checkpoint": f"tiny [{name_hash('tiny')[:10]}]"}))
    assert status == 200 and info(body)["sd_model_name"] == "tiny" and info(body)["sd_model_hash"] == name_hash("tiny")[:10]
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img())
    assert status == 200 and info(body)["sd_model_name"] == "tiny-sdxl"
    # ...unless the call asks to keep its settings (override_settings_restore_afterwards: false).
    await call(client, "POST", "/sdapi/v1/txt2img", txt2img(override_settings={"sd_model_checkpoint": "tiny"},
                                                             override_settings_restore_afterwards=False))
    _, options = await call(client, "GET", "/sdapi/v1/options")
    assert options["sd_model_checkpoint"].startswith("tiny [")
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(
        override_settings={"sd_model_checkpoint": "no-such-model.safetensors"}))
    assert status == 404 and body["code"] == "unknown_model" and body["field"] == "override_settings.sd_model_checkpoint"


async def test_error_shapes_clients_tell_apart(client):
    # A route A1111 would have only with an extension: FastAPI's 404, read as "not in API mode".
    for path in ("/sdapi/v1/no-such-route", "/controlnet/render_openpose_json", "/sam/heartbeat", "/tagger/v1/interrogators"):
        status, body = await call(client, "GET", path)
        assert (status, body["detail"]) == (404, "Not Found") and body["type"] == "error", path
    status, body = await call(client, "GET", "/sdapi/v1/txt2img")
    assert (status, body["detail"]) == (405, "Method Not Allowed")
    status, body = await call(client, "GET", "/api/v1/no-such-route")
    assert status == 404 and "detail" not in body  # our own API keeps its shape
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(sampler_name="DPM adaptive"))
    assert (status, body["detail"], body["field"]) == (404, "Sampler not found", "sampler_name")
    status, body = await call(client, "POST", "/sdapi/v1/img2img", txt2img())
    assert (status, body["detail"]) == (404, "Init image not found")
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(script_name="X/Y/Z plot"))
    assert (status, body["detail"]) == (422, "Script 'X/Y/Z plot' not found")
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(alwayson_scripts={"ADetailer": {"args": []}}))
    assert (status, body["detail"]) == (422, "always on script ADetailer not found")
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(steps="many"))
    assert status == 422 and body["detail"][0]["loc"] == ["body", "steps"] and body["field"] == "steps"
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img(steps=1000))
    assert status == 422 and body["detail"] == body["message"] and body["field"] == "steps"
    status, body = await call(client, "POST", "/sdapi/v1/txt2img", txt2img())  # still serving
    assert status == 200 and len(body["images"]) == 1


async def test_lists_and_flags(make_client, tmp_path):
    from lora_factory import save_tiny_lora

    save_tiny_lora(tmp_path / "loras" / "detail.safetensors")
    (tmp_path / "styles.csv").write_text('name,prompt,negative_prompt\nbronze,"{prompt}, cast bronze","plastic"\n')
    client = await make_client(lora_dirs=[tmp_path / "loras"], styles_file=tmp_path / "styles.csv", token="s3cret-token")
    auth = {"Authorization": "Bearer s3cret-token"}
    _, loras = await call(client, "GET", "/sdapi/v1/loras", headers=auth)
    assert [(item["name"], item["alias"]) for item in loras] == [("detail", "detail")]
    assert loras[0]["path"].endswith("detail.safetensors") and isinstance(loras[0]["metadata"], dict)
    _, styles = await call(client, "GET", "/sdapi/v1/prompt-styles", headers=auth)
    assert styles == [{"name": "bronze", "prompt": "{prompt}, cast bronze", "negative_prompt": "plastic"}]
    for path, expected in (("scripts", {"txt2img": ["controlnet"], "img2img": ["controlnet"]}), ("extensions", []),
                           ("hypernetworks", []), ("face-restorers", []), ("realesrgan-models", []),
                           ("embeddings", {"loaded": {}, "skipped": {}}), ("sd-vae", [])):
        status, body = await call(client, "GET", f"/sdapi/v1/{path}", headers=auth)
        assert (status, body) == (200, expected), path
    _, modes = await call(client, "GET", "/sdapi/v1/latent-upscale-modes", headers=auth)
    assert modes[0] == {"name": "Latent"} and len(modes) == 6
    _, ups = await call(client, "GET", "/sdapi/v1/upscalers", headers=auth)
    assert [u["name"] for u in ups][:3] == ["None", "Lanczos", "Nearest"]
    _, memory = await call(client, "GET", "/sdapi/v1/memory", headers=auth)
    assert set(memory["ram"]) == {"free", "used", "total"} and ("error" in memory["cuda"] or "system" in memory["cuda"])
    resp = await client.get("/sdapi/v1/cmd-flags", headers=auth)
    text = await resp.text()
    flags = await resp.json()
    assert flags["api"] is True and flags["lora_dir"] == str(tmp_path / "loras") and "s3cret-token" not in text
    for path in ("/sdapi/v1/cmd-flags", "/sdapi/v1/options", "/sdapi/v1/loras"):
        assert (await client.get(path)).status == 401  # the token guards every route
    for method, path in (("POST", "refresh-checkpoints"), ("POST", "refresh-loras"), ("POST", "refresh-vae")):
        assert await call(client, method, f"/sdapi/v1/{path}", headers=auth) == (200, None)
    status, schedulers = await call(client, "GET", "/sdapi/v1/schedulers", headers=auth)
    labels = [s["label"] for s in schedulers]
    assert labels[:3] == ["Automatic", "Uniform", "Karras"] and "Align Your Steps" not in labels
    assert set(schedulers[0]) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
