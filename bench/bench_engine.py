"""Engine figures, measured in one run: per-mode time and the cost of previews.

    python bench/bench_engine.py                  # tiny per-mode times + random-mid preview ratios
    python bench/bench_engine.py --rounds 5 --size 256

1. Per-mode time on the built-in `tiny` model (txt2img, img2img, inpaint, inpaint only-masked,
   outpaint, seamless txt2img): median wall time of `Engine.generate`, weights already loaded.
2. Preview overhead on the `random-mid` preset (an SD1-style model with random weights and a
   (128, 256, 512)-channel UNet, built offline): the same request with a preview decoded at every
   step vs. no previews, run interleaved so machine drift affects both alike; printed as ratios
   (previews / none) per decoder.

Nothing is downloaded; `--device` picks the device (automatic by default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from latentbridge.engine import Engine  # noqa: E402
from latentbridge.bench import paired_ratio  # noqa: E402
from latentbridge.protocol import GenerationRequest, PreviewOptions  # noqa: E402
from latentbridge.settings import Settings  # noqa: E402


def _engine(model: str, device: str | None) -> Engine:
    engine = Engine(Settings(model=model, device=device), local=True)
    engine.load()
    return engine


def _picture(size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _mask(size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return mask


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def per_mode_times(engine: Engine, size: int, steps: int, rounds: int) -> dict[str, float]:
    base = dict(prompt="bench", width=size, height=size, steps=steps, seed=1, sampler="euler",
                preview={"decoder": "none"})
    init, mask = _picture(size), _mask(size)
    cases = {
        "txt2img": (GenerationRequest(**base), None, None),
        "img2img": (GenerationRequest(mode="img2img", strength=1.0, **base), init, None),
        "inpaint": (GenerationRequest(mode="inpaint", strength=1.0, **base), init, mask),
        "inpaint only-masked": (GenerationRequest(mode="inpaint", strength=1.0, mask={"only_masked": True, "padding": 8}, **base), init, mask),
        "outpaint (+32 right)": (GenerationRequest(mode="outpaint", strength=1.0, outpaint={"right": 32}, **base), init, None),
        "txt2img seamless xy": (GenerationRequest(seamless="xy", **base), None, None),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for name, (request, image, mask_image) in cases.items():
            times[name].append(_timed(lambda: engine.generate(request, image, mask_image)))
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def preview_ratios(engine: Engine, size: int, steps: int, rounds: int) -> dict[str, tuple[float, float, int]]:
    """decoder → (median seconds with previews, ratio previews/none, previews per run)."""
    request = GenerationRequest(prompt="bench", width=size, height=size, steps=steps, seed=1, sampler="euler")
    counted = {"previews": 0}

    def every_step(update) -> None:
        if update.preview() is not None:
            counted["previews"] += 1

    def run(decoder: str | None) -> float:
        if decoder is None:
            return _timed(lambda: engine.generate(request.model_copy(update={"preview": PreviewOptions(decoder="none")})))
        with_preview = request.model_copy(update={"preview": PreviewOptions(decoder=decoder, max_size=256)})
        return _timed(lambda: engine.generate(with_preview, on_step=every_step))

    decoders = ["latent2rgb", "vae"]
    plain: list[float] = []
    timed: dict[str, list[float]] = {d: [] for d in decoders}
    counts: dict[str, int] = {}
    for round_index in range(rounds + 1):
        none_s = run(None)
        for decoder in decoders:
            counted["previews"] = 0
            seconds = run(decoder)
            counts[decoder] = counted["previews"]
            if round_index:
                timed[decoder].append(seconds)
        if round_index:
            plain.append(none_s)
    result = {"none": (statistics.median(plain), 1.0, 0)}
    for decoder in decoders:
        result[decoder] = (statistics.median(timed[decoder]), paired_ratio(timed[decoder], plain), counts[decoder])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up (medians)")
    parser.add_argument("--size", type=int, default=64, help="tiny per-mode image side (default 64)")
    parser.add_argument("--steps", type=int, default=4, help="tiny per-mode steps (default 4)")
    parser.add_argument("--mid-size", type=int, default=256, help="random-mid image side (default 256)")
    parser.add_argument("--mid-steps", type=int, default=8, help="random-mid steps (default 8)")
    parser.add_argument("--device", default=None, help="cuda, mps, cpu (automatic when unset)")
    args = parser.parse_args()

    tiny = _engine("tiny", args.device)
    status = tiny.status
    print(f"tiny ({status.device}, {status.dtype}), {args.size}x{args.size} px, {args.steps} steps, "
          f"median of {args.rounds} rounds")
    for name, seconds in per_mode_times(tiny, args.size, args.steps, args.rounds).items():
        print(f"  {name:24s} {seconds * 1000:8.1f} ms")

    mid = _engine("random-mid", args.device)
    print(f"random-mid, {args.mid_size}x{args.mid_size} px, {args.mid_steps} steps, a preview at every step, "
          f"median of {args.rounds} interleaved rounds")
    for decoder, (seconds, ratio, count) in preview_ratios(mid, args.mid_size, args.mid_steps, args.rounds).items():
        label = "no previews" if decoder == "none" else f"previews ({decoder})"
        print(f"  {label:24s} {seconds * 1000:8.1f} ms   ratio previews / none {ratio:.3f}"
              + (f"   ({count} previews)" if count else ""))


if __name__ == "__main__":
    main()
