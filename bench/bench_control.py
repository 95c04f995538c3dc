"""ControlNet overhead on the CPU: the same request on `random-mid` with 0, 1 and 2 ControlNet
units, run interleaved in one process, printed as ratios (units / none).

    PYTHONPATH=backend python bench/bench_control.py [--size 256] [--steps 8] [--rounds 3]

`random-mid` (an SD1-style model with a (128, 256, 512)-channel UNet, random weights) has no
built-in ControlNet, so one is derived from its UNet with diffusers' `ControlNetModel.from_unet`,
saved as a diffusers folder, and loaded by path through the engine's own ControlNet loading (the
path a local user's folder takes). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from latentbridge.bench import paired_ratio  # noqa: E402
from latentbridge.engine import Engine  # noqa: E402
from latentbridge.protocol import GenerationRequest  # noqa: E402
from latentbridge.settings import Settings  # noqa: E402


def _controlnet_folder(engine: Engine, folder: str) -> str:
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(engine.model.base.unet)
    net.save_pretrained(folder, safe_serialization=True)
    return folder


def _depth_like(size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    ramp = (255 * (x + y) / (2 * (size - 1))).astype(np.uint8)
    return Image.fromarray(np.stack([ramp] * 3, axis=-1), "RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    engine = Engine(Settings(model="random-mid", device=args.device), local=True)
    engine.load()
    with tempfile.TemporaryDirectory() as tmp:
        net = _controlnet_folder(engine, os.path.join(tmp, "controlnet-random-mid"))
        base = dict(prompt="bench", width=args.size, height=args.size, steps=args.steps, seed=1, sampler="euler",
                    preview={"decoder": "none"})
        image = _depth_like(args.size)
        depth, normal = {"type": "depth", "model": net}, {"type": "normal", "model": net, "weight": 0.5}
        cases = {
            "none": (GenerationRequest(**base), {}),
            "1 unit": (GenerationRequest(**base, controls=[depth]), {"control.0": image}),
            "2 units": (GenerationRequest(**base, controls=[depth, normal]), {"control.0": image, "control.1": image}),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for round_index in range(args.rounds + 1):  # round 0 loads the ControlNet and warms up: dropped
            for name, (request, inputs) in cases.items():
                start = time.perf_counter()
                engine.generate(request, inputs=inputs)
                if round_index:
                    times[name].append(time.perf_counter() - start)
    status = engine.status
    print(f"random-mid ({status.device}, {status.dtype}), {args.size}² px, {args.steps} steps, "
          f"median of {args.rounds} interleaved rounds")
    for name, values in times.items():
        ratio = paired_ratio(values, times["none"])
        print(f"  {name:8s} {statistics.median(values):7.2f} s   ratio / none {ratio:.3f}")


if __name__ == "__main__":
    main()
