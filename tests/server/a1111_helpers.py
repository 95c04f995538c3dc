"""Helpers for the A1111 route tests (imported by name: the test folders are not packages)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
from PIL import Image

SIZE = 64


def png_b64(image: Image.Image, fmt: str = "PNG", **save: Any) -> str:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return base64.b64encode(out.getvalue()).decode("ascii")


def decode(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def gradient(width: int = SIZE, height: int = SIZE) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8), "RGB")


def txt2img(**fields: Any) -> dict[str, Any]:
    payload = {"prompt": "bronze", "steps": 2, "width": SIZE, "height": SIZE, "seed": 7, "cfg_scale": 1.0,
               "sampler_name": "Euler"}
    payload.update(fields)
    return payload


async def call(client, method: str, path: str, payload: Any = None, **kwargs: Any) -> tuple[int, Any]:
    resp = await client.request(method, path, json=payload, **kwargs) if payload is not None else \
        await client.request(method, path, **kwargs)
    text = await resp.text()
    return resp.status, json.loads(text) if text else None


def info(body: dict[str, Any]) -> dict[str, Any]:
    return json.loads(body["info"])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)
