"""Preprocessor figures, measured in one run: time per preprocessor on one image.

    python bench/bench_preprocess.py                       # 512 x 512, the built-in tiny-depth estimator
    python bench/bench_preprocess.py --size 1024 --estimator depth-anything/Depth-Anything-V2-Small-hf

Each preprocessor runs on the same picture (a photo-like gradient with shapes), interleaved over
the rounds after one warm-up round (which also loads the estimator); the median is printed, and
for `normal` its cost over `depth` as a ratio of the same rounds (the Sobel normals on top of the
estimate). With `tiny-depth` the depth figures are the estimator plumbing (processor, a 0.1 M
parameter model at 112 px, resize back, normalisation), not a real model's inference time.
`--estimator` takes anything `--depth-estimator` does; downloads obey HF_HUB_OFFLINE (on by default here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from latentbridge.bench import paired_ratio  # noqa: E402
from latentbridge.engine.estimators import EstimatorCache  # noqa: E402
from latentbridge.engine.preprocess import PREPROCESSORS, preprocess  # noqa: E402
from latentbridge.settings import Settings  # noqa: E402


def _picture(size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 200 // (size - 1) + 20, y * 200 // (size - 1) + 20, np.full_like(x, 128)], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 8, size // 8, size // 2, size // 2), fill=(230, 60, 40), outline=(0, 0, 0), width=3)
    draw.rectangle((size // 2, size // 2, 7 * size // 8, 7 * size // 8), fill=(40, 60, 230), outline=(0, 0, 0), width=3)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up (medians)")
    parser.add_argument("--estimator", default="tiny-depth", help="depth estimator (default tiny-depth)")
    parser.add_argument("--device", default=None, help="device for the estimator (automatic by default)")
    args = parser.parse_args()

    estimators = EstimatorCache(Settings(depth_estimator=args.estimator, device=args.device))
    image = _picture(args.size)
    times: dict[str, list[float]] = {name: [] for name in PREPROCESSORS}
    for round_index in range(args.rounds + 1):
        for name in PREPROCESSORS:
            start = time.perf_counter()
            preprocess(name, image, estimators=estimators)
            if round_index:  # the first round warms up (and loads the estimator)
                times[name].append(time.perf_counter() - start)

    estimator = estimators.get()
    print(f"preprocessors at {args.size}x{args.size}, median of {args.rounds} rounds; estimator {estimator.name} "
          f"({type(estimator.model).__name__}, {str(estimator.dtype).removeprefix('torch.')} on {estimator.device})")
    for name, values in times.items():
        print(f"  {name:<17} {statistics.median(values) * 1000:8.1f} ms")
    print(f"  normal / depth    {paired_ratio(times['normal'], times['depth']):8.2f} x")


if __name__ == "__main__":
    main()
