"""Shared helpers for the engine tests (plain functions; fixtures live in conftest.py)."""

import numpy as np
from PIL import Image

from latentbridge.engine import Engine
from latentbridge.protocol import GenerationRequest
from latentbridge.settings import Settings


def make_engine(model: str = "tiny", **settings) -> Engine:
    engine = Engine(Settings(model=model, **settings), local=True)
    engine.load()
    return engine


def small_request(**fields) -> GenerationRequest:
    values = dict(prompt="a red brick wall", width=64, height=64, steps=3, seed=7, sampler="euler")
    values.update(fields)
    return GenerationRequest(**values)


def gradient_image(width: int = 64, height: int = 64) -> Image.Image:
    """A smooth, non-uniform RGB picture: any pixel change shows."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def box_mask(width: int = 64, height: int = 64, box=(16, 16, 48, 48)) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)
