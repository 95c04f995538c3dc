"""Tiny upscaler models for the tests: randomly initialised ESRGAN (RRDB) nets built with
spandrel's own architecture and saved by the real save code (safetensors), as users' files are.

spandrel imports torchvision, which the main test environment lacks (PyPI's torchvision does not
import beside the CPU torch): there these tests skip, unless LATENTBRIDGE_REQUIRE_SPANDREL=1 (set
by .ci/run's upscaler step, which installs torchvision) makes them fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def spandrel_or_skip():
    if os.environ.get("LATENTBRIDGE_REQUIRE_SPANDREL") == "1":
        import spandrel  # must work here: fail loudly

        return spandrel
    try:
        import spandrel
    except Exception as exc:  # noqa: BLE001 - missing, or torchvision failing inside it
        pytest.skip(f"spandrel is not usable here ({type(exc).__name__}); the CI upscaler step runs these")
    return spandrel


def save_tiny_esrgan(path: Path, scale: int = 2, seed: int = 0) -> Path:
    """An ESRGAN x`scale` with 8 filters and one RRDB block, random weights, as a .safetensors file."""
    spandrel_or_skip()
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
