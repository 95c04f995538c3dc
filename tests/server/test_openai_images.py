"""The official `openai` SDK against the real server's /v1 images API on a real port."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import openai
import pytest
import requests
from a1111_helpers import gradient, pixels
from live_server import LiveServer
from PIL import Image, ImageDraw

from latentbridge import images as image_utils
from latentbridge.protocol import Mode
from latentbridge.server.app import JOBS_KEY, create_app
from latentbridge.settings import Settings

TOKEN = "sk-local-test-token"
SIZE = 64


@pytest.fixture(scope="module")
def live(tiny_engine, tmp_path_factory):
    settings = Settings(model="tiny", data_dir=tmp_path_factory.mktemp("openai") / "data", preview_interval_s=0.0,
                        token=TOKEN, max_batch=2)
    server = LiveServer(create_app(settings, tiny_engine)).start(token=TOKEN)
    yield server
    server.stop()


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=TOKEN, max_retries=0)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_generate_n_images_with_a_seed_reproducibly_and_every_call_is_a_job(client, live):
    before = len(live.call(lambda: live.app[JOBS_KEY].history(100)))
    result = client.images.generate(prompt="a bronze bell", size=f"{SIZE}x{SIZE}", n=3, quality="low",
                                    extra_body={"seed": 21, "steps": 2})
    assert len(result.data) == 3 and result.size == "64x64" and result.created > 0
    images = [_image(item.b64_json) for item in result.data]
    assert all(im.size == (SIZE, SIZE) for im in images) and result.data[0].revised_prompt == "a bronze bell"
    # n above the server's batch limit (2) runs as several jobs; seeds run on: 21, 22, then 23.
    seeds = [image_utils.read_png_request(base64.b64decode(item.b64_json)).seed for item in result.data]
    assert seeds == [21, 22, 23]
    assert len(live.call(lambda: live.app[JOBS_KEY].history(100))) == before + 2
    again = client.images.generate(prompt="a bronze bell", size=f"{SIZE}x{SIZE}", extra_body={"seed": 21, "steps": 2})
    assert np.array_equal(pixels(_image(again.data[0].b64_json)), pixels(images[0]))


def test_quality_maps_to_steps_and_formats_and_models(client):
    result = client.images.generate(prompt="a lamp", model="dall-e-3", size=f"{SIZE}x{SIZE}", quality="low",
                                    output_format="jpeg", extra_body={"seed": 1, "negative_prompt": "blurry"})
    data = base64.b64decode(result.data[0].b64_json)
    assert data[:2] == b"\xff\xd8" and result.output_format == "jpeg"
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["tiny"] and listed.data[0].owned_by == "latentbridge"
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-9")


def test_url_results_are_served_by_this_server(client, live):
    result = client.images.generate(prompt="a cup", size=f"{SIZE}x{SIZE}", response_format="url",
                                    extra_body={"steps": 2})
    url = result.data[0].url
    assert url.startswith(live.url + "/api/v1/jobs/")
    assert requests.get(url, timeout=10).status_code == 401  # the same token guards the result
    png = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).content
    assert Image.open(io.BytesIO(png)).size == (SIZE, SIZE)


def test_edits_inpaint_where_the_mask_is_transparent_and_img2img_without_one(client):
    init = gradient()
    mask = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 255))
    ImageDraw.Draw(mask).rectangle((0, 0, SIZE // 2 - 1, SIZE), fill=(0, 0, 0, 0))  # left half: edit
    result = client.images.edit(image=("init.png", _png(init), "image/png"), mask=("mask.png", _png(mask), "image/png"),
                                prompt="a brass door", size=f"{SIZE}x{SIZE}", extra_body={"seed": 3, "steps": 2})
    out = pixels(_image(result.data[0].b64_json))
    original = pixels(init)
    assert np.array_equal(out[:, SIZE // 2 + 16:], original[:, SIZE // 2 + 16:])  # kept (beyond the 4 px feather)
    assert np.abs(out[:, : SIZE // 2 - 8] - original[:, : SIZE // 2 - 8]).mean() > 5
    request = image_utils.read_png_request(base64.b64decode(result.data[0].b64_json))
    assert request.mode is Mode.inpaint
    whole = client.images.edit(image=("init.png", _png(init), "image/png"), prompt="restyle",
                               extra_body={"seed": 3, "steps": 2, "strength": 0.5})
    restyled = image_utils.read_png_request(base64.b64decode(whole.data[0].b64_json))
    assert restyled.mode is Mode.img2img and restyled.strength == 0.5 and _image(whole.data[0].b64_json).size == (SIZE, SIZE)
    # No mask, but a transparent hole in the image: that is the area to edit (as dall-e-2).
    holed = init.convert("RGBA")
    ImageDraw.Draw(holed).rectangle((16, 16, 47, 47), fill=(0, 0, 0, 0))
    hole = client.images.edit(image=("holed.png", _png(holed), "image/png"), prompt="fill", extra_body={"steps": 2})
    assert image_utils.read_png_request(base64.b64decode(hole.data[0].b64_json)).mode is Mode.inpaint


def test_errors_are_typed_and_the_sdk_raises_its_own_exceptions(client, live):
    cases = [
        (dict(prompt="x", size="100x100"), openai.BadRequestError, "size"),
        (dict(prompt="x", size="64x64", extra_body={"no_such_field": 1}), openai.BadRequestError, "no_such_field"),
        (dict(prompt="x", size="64x64", background="transparent"), openai.BadRequestError, "background"),
        (dict(prompt="x", size="64x64", output_format="gif"), openai.BadRequestError, "output_format"),
        (dict(prompt="x", size="8192x8192"), openai.BadRequestError, "size"),
        (dict(prompt="x", model="no-such-model", size="64x64"), openai.NotFoundError, "model"),
    ]
    for kwargs, error, param in cases:
        with pytest.raises(error) as info:
            client.images.generate(**kwargs)
        assert info.value.body["param"] == param and info.value.body["code"], kwargs
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=("a.png", _png(gradient()), "image/png"),
                           mask=("m.png", _png(Image.new("L", (SIZE, SIZE))), "image/png"), prompt="x")
    assert info.value.body["param"] == "mask"
    wrong = openai.OpenAI(base_url=f"{live.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.images.generate(prompt="x", size="64x64")
    resp = requests.get(f"{live.url}/v1/no-such-route", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["message"].startswith("Invalid URL")


def test_the_async_client(live):
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key=TOKEN, max_retries=0) as client:
            return await client.images.generate(prompt="async", size="64x64", extra_body={"steps": 2, "seed": 9})

    result = asyncio.run(run())
    assert image_utils.read_png_request(base64.b64decode(result.data[0].b64_json)).seed == 9
