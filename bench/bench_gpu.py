"""The fast-path figures on random weights of the real architectures, in one run (bench/gpu.sh).

Builds, in code and offline, pipelines with the real configurations of SD 1.5, SDXL and SD-Turbo
(= SD 2.1's architecture) and the real TAESD, with random weights; saves them as diffusers folders
and serves each through the real server (in process, loopback websocket). Prints:

1. SD1.5 512² it/s: fp16 + SDPA (the defaults); + channels_last; + torch.compile (warmed up at
   load for 512x512, as `--compile default --compile-sizes 512x512` does);
2. SDXL 1024² it/s (fp16 + SDPA);
3. SD-Turbo architecture, 512², one-step img2img live frames/s end to end through a websocket live
   session (TAESD decoder, raw RGB frames), with one frame in flight (as the add-on sends) and
   with one rendering plus one pending (the most the server keeps); plain, and with compile +
   CUDA graphs for the session's fixed shape;
4. bridge / raw diffusers: a whole SD1.5 job through the websocket against the diffusers
   pipeline called directly on the same weights, in interleaved rounds (median of the ratios).

it/s counts denoising steps: (S - 2) / (time of an S-step job - time of a 2-step job), so the text
encoder and the VAE decode (the same in both) drop out.

    bench/gpu.sh                              # CUDA, the figures (at most ~8 minutes)
    LATENTBRIDGE_BENCH_REDUCED=1 bench/gpu.sh # any device: narrow models, small sizes, few
                                              # steps: proves the script end to end, no figures
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from latentbridge.bench import _wait_ready, paired_ratio  # noqa: E402
from latentbridge.protocol import (WS_PATH, BinaryHeader, GenerationRequest, decode_binary_frame,  # noqa: E402
                                   encode_binary_frame, parse_server_event)
from latentbridge.settings import load_settings  # noqa: E402

VOCAB = 49408  # CLIP's vocabulary size (the byte-level tokenizer below uses the first ids only)


# ------------------------------------------------------------------ the architectures


def _quiet() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _text_encoder(width: int, layers: int, heads: int, projection: int | None, act: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=width * 4, num_hidden_layers=layers,
                            num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                            projection_dim=projection or width, bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1,
                            pad_token_id=VOCAB - 1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(width: int, scaling: float, sample: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         block_out_channels=tuple(width * m for m in (1, 2, 4, 4)),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         norm_num_groups=32, sample_size=sample, scaling_factor=scaling)


def build(arch: str, reduced: bool):
    """A pipeline of `arch` (sd15, sd2, sdxl) with the real configuration and random weights;
    `reduced`: narrow widths and fewer deep layers (the same topology, for CPUs)."""
    from diffusers import (EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from latentbridge.engine.tiny import _tokenizer

    c = 32 if reduced else 320  # the UNets' first width
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1)
    common = dict(norm_num_groups=32, layers_per_block=2, sample_size=64)
    vae_width = 32 if reduced else 128
    if arch == "sdxl":
        # CLIP ViT-L + OpenCLIP ViT-bigG (projected), 2048-wide cross attention, text-time embeddings.
        w1, w2, time_dim = (64, 128, 32) if reduced else (768, 1280, 256)
        t1 = _text_encoder(w1, 2 if reduced else 12, 4 if reduced else 12, None, "quick_gelu")
        t2 = _text_encoder(w2, 2 if reduced else 32, 4 if reduced else 20, w2, "gelu")
        unet = UNet2DConditionModel(
            **{**common, "sample_size": 128}, block_out_channels=(c, 2 * c, 4 * c),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 2) if reduced else (1, 2, 10),
            attention_head_dim=(2, 4, 8) if reduced else (5, 10, 20), cross_attention_dim=w1 + w2,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + w2)
        return StableDiffusionXLPipeline(vae=_vae(vae_width, 0.13025, 1024), text_encoder=t1, text_encoder_2=t2,
                                         tokenizer=_tokenizer(), tokenizer_2=_tokenizer(), unet=unet,
                                         scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)
    sd2 = arch == "sd2"
    # SD 2.x: OpenCLIP ViT-H (1024 wide, 23 layers), linear projections, head dims 5/10/20/20;
    # SD 1.5: CLIP ViT-L (768 wide, 12 layers), 8 heads everywhere. Reduced keeps the family's width
    # marker (1024 / 768) so the engine tells them apart as it does real checkpoints.
    width = 1024 if sd2 else 768
    text = _text_encoder(width, 2 if reduced else (23 if sd2 else 12), 16 if sd2 else 12, None,
                         "gelu" if sd2 else "quick_gelu")
    unet = UNet2DConditionModel(
        **common, block_out_channels=(c, 2 * c, 4 * c, 4 * c),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=((2, 4, 8, 8) if reduced else (5, 10, 20, 20)) if sd2 else 8, cross_attention_dim=width,
        use_linear_projection=sd2)
    return StableDiffusionPipeline(vae=_vae(vae_width, 0.18215, 512), text_encoder=text, tokenizer=_tokenizer(),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save(arch: str, folder: Path, reduced: bool, device: torch.device, dtype: torch.dtype) -> Path:
    """Build on the device (random init there is fast) and save as a diffusers folder."""
    clock = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        pipe = build(arch, reduced)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(f"  built {arch}: UNet {params:.0f} M parameters, saved in {time.perf_counter() - clock:.0f} s", flush=True)
    del pipe
    return folder


def save_taesd(folder: Path, reduced: bool, dtype: torch.dtype) -> Path:
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    width = 16 if reduced else 64  # TAESD's own width is 64
    AutoencoderTiny(encoder_block_out_channels=(width,) * 4, decoder_block_out_channels=(width,) * 4).to(
        dtype=dtype).save_pretrained(folder, safe_serialization=True)
    return folder


# ------------------------------------------------------------------ serving


@contextlib.asynccontextmanager
async def serving(settings):
    from aiohttp import web

    from latentbridge.client import AsyncClient
    from latentbridge.server.app import ENGINE_KEY, create_app

    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        async with AsyncClient(url, token=settings.token) as client:
            clock = time.perf_counter()
            await _wait_ready(client, timeout_s=600)
            engine = app[ENGINE_KEY]
            report = getattr(engine.accel, "report", {}) if getattr(engine, "accel", None) is not None else {}
            print(f"    loaded in {time.perf_counter() - clock:.0f} s; options {report or 'defaults'}", flush=True)
            yield client, engine, url
    finally:
        await runner.cleanup()


def settings_for(model: Path, data: Path, device: str | None, **options):
    return load_settings(environ={}, model=str(model), data_dir=data, host="127.0.0.1", port=0, device=device,
                         **options)


async def _job_s(client, request: GenerationRequest) -> float:
    clock = time.perf_counter()
    await client.generate(request)
    return time.perf_counter() - clock


async def steps_per_s(client, size: int, steps: int, rounds: int) -> float:
    """Denoising it/s through the websocket: (S - 2) / (t(S) - t(2)), medians of `rounds`."""
    base = dict(prompt="a bronze statue", seed=1, width=size, height=size, preview={"decoder": "none"})
    full, short = (GenerationRequest(steps=steps, **base), GenerationRequest(steps=2, **base))
    await client.generate(full)  # warm-up
    long_s, short_s = [], []
    for _ in range(rounds):
        long_s.append(await _job_s(client, full))
        short_s.append(await _job_s(client, short))
    extra = statistics.median(long_s) - statistics.median(short_s)
    return (steps - 2) / extra if extra > 0 else float("nan")  # nan: lost in the noise (reduced runs)


async def bridge_ratio(client, engine, size: int, steps: int, rounds: int) -> tuple[float, float, float]:
    """(websocket job s, raw diffusers s, ratio): the same request, the same weights, interleaved."""
    request = GenerationRequest(prompt="a bronze statue", seed=1, steps=steps, width=size, height=size,
                                guidance=7.0, sampler="euler", preview={"decoder": "none"})
    pipe = engine.model.base

    def raw() -> float:
        generator = torch.Generator(device=engine.model.device).manual_seed(1)
        clock = time.perf_counter()
        with torch.inference_mode():
            pipe(prompt="a bronze statue", negative_prompt="", num_inference_steps=steps, guidance_scale=7.0,
                 width=size, height=size, generator=generator, output_type="pil")
        if engine.model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - clock

    await asyncio.to_thread(raw)  # the server is idle between its jobs: the worker is free
    bridge, direct = [], []
    for _ in range(rounds):
        bridge.append(await _job_s(client, request))
        direct.append(await asyncio.to_thread(raw))
    return statistics.median(bridge), statistics.median(direct), paired_ratio(bridge, direct)


async def live_fps(url: str, token: str, size: int, seconds: float, outstanding: int) -> tuple[float, float, int]:
    """One-step img2img frames through a live session, keeping `outstanding` frames unanswered
    (1: one in flight as the add-on sends; 2: one rendering + one pending on the server).
    Returns (frames/s, median latency ms, frames dropped as stale by the server)."""
    import aiohttp

    request = {"mode": "img2img", "prompt": "a bronze statue", "width": size, "height": size, "strength": 0.5,
               "seed": 3}
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8).tobytes() for _ in range(4)]
    async with aiohttp.ClientSession() as session, session.ws_connect(url + WS_PATH, max_msg_size=0) as ws:
        await ws.send_json({"type": "hello", "client": "bench-gpu", "token": token})

        async def receive():
            msg = await asyncio.wait_for(ws.receive(), 180)
            if msg.type == aiohttp.WSMsgType.TEXT:
                return parse_server_event(msg.data)
            if msg.type == aiohttp.WSMsgType.BINARY:
                return decode_binary_frame(msg.data)
            raise RuntimeError(f"live session connection ended: {msg!r}")

        async def until(kind: str):
            while True:
                item = await receive()
                if getattr(item, "type", None) == "error":
                    raise RuntimeError(f"{item.code.value}: {item.message}")
                if getattr(item, "type", None) == kind or (isinstance(item, tuple) and item[0].kind == kind):
                    return item

        await until("hello")
        await ws.send_json({"type": "live_start", "request": request, "live": {"preset": "turbo", "format": "rgb"}})
        session_id = (await until("live_started")).job_id
        sent_at: dict[int, float] = {}
        frame = 0

        async def send():
            nonlocal frame
            frame += 1
            data = pictures[frame % len(pictures)]
            header = BinaryHeader(kind="live_frame", format="rgb", job_id=session_id, frame=frame, width=size,
                                  height=size, parts=[{"role": "init", "bytes": len(data)}])
            sent_at[frame] = time.perf_counter()
            await ws.send_bytes(encode_binary_frame(header, data))

        await send()
        await until("live_result")  # warm-up frame
        latencies, results = [], 0
        for _ in range(outstanding):
            await send()
        clock = time.perf_counter()
        while time.perf_counter() - clock < seconds:
            header, _ = await until("live_result")
            results += 1
            latencies.append((time.perf_counter() - sent_at[header.frame]) * 1000.0)
            # A result for frame r answers every frame up to r (rendered, or replaced while pending).
            while frame - header.frame < outstanding:
                await send()
        elapsed = time.perf_counter() - clock
        last = header.frame
        while last < frame:  # what is still on its way is answered (not counted) before the stop
            last = (await until("live_result"))[0].frame
        await ws.send_json({"type": "live_stop", "job_id": session_id})
        stopped = await until("live_stopped")
    return results / elapsed, statistics.median(latencies), stopped.frames.dropped


# ------------------------------------------------------------------ the run


async def run(args) -> None:
    cuda = torch.cuda.is_available() and args.device in (None, "cuda")
    device = torch.device("cuda" if cuda else (args.device or "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    reduced = args.reduced
    sd_size, xl_size, live_size = (64, 128, 64) if reduced else (512, 1024, 512)
    steps, rounds, seconds = (5, 1, 2.0) if reduced else (args.steps, args.rounds, args.live_seconds)
    name = torch.cuda.get_device_name(0) if cuda else device.type
    print(f"device {name}, {str(dtype).removeprefix('torch.')}, torch {torch.__version__}, {'REDUCED (narrow models, no figures)' if reduced else 'full'}",
          flush=True)
    results: list[str] = []
    with tempfile.TemporaryDirectory(prefix="latentbridge-bench-gpu-") as tmp:
        root = Path(tmp)
        folders = {}

        def model(arch: str) -> Path:
            if arch not in folders:
                folders[arch] = save(arch, root / arch, reduced, device, dtype)
            return folders[arch]

        async def section(title: str, body) -> None:
            print(f"\n{title}", flush=True)
            try:
                for line in await body():
                    results.append(f"{title}: {line}")
                    print(f"  {line}", flush=True)
            except Exception as exc:  # noqa: BLE001 - one section failing leaves the others' figures
                traceback.print_exc()
                results.append(f"{title}: FAILED ({type(exc).__name__}: {exc})")

        async def sd15() -> list[str]:
            out = []
            variants = [("SDPA (defaults)", {}), ("+ channels_last", {"channels_last": True}),
                        ("+ channels_last + compile", {"channels_last": True, "compile": "default",
                                                       "compile_sizes": [f"{sd_size}x{sd_size}"]})]
            for label, options in variants:
                if label.endswith("compile") and args.skip_compile:
                    continue
                async with serving(settings_for(model("sd15"), root / "data", args.device, **options)) as (client, engine, _):
                    out.append(f"{label}: {await steps_per_s(client, sd_size, steps, rounds):.1f} it/s")
                    if not options:
                        ws_s, raw_s, ratio = await bridge_ratio(client, engine, sd_size, steps, rounds)
                        out.append(f"bridge / raw diffusers ({steps}-step job, cfg 7): websocket {ws_s * 1000:.0f} ms, "
                                   f"diffusers {raw_s * 1000:.0f} ms, ratio {ratio:.3f}")
            return out

        async def sdxl() -> list[str]:
            async with serving(settings_for(model("sdxl"), root / "data", args.device)) as (client, _engine, _):
                return [f"SDPA (defaults): {await steps_per_s(client, xl_size, steps, rounds):.1f} it/s"]

        async def live() -> list[str]:
            out = []
            taesd = save_taesd(root / "taesd", reduced, dtype)
            variants = [("plain", {})]
            if not args.skip_compile:
                variants.append(("compile + CUDA graphs", {"compile": "default", "cuda_graphs": True,
                                                           "compile_sizes": [f"{live_size}x{live_size}"]}))
            for label, options in variants:
                settings = settings_for(model("sd2"), root / "data", args.device, taesd=str(taesd), **options)
                async with serving(settings) as (_client, _engine, url):
                    for outstanding, how in ((1, "one in flight (the add-on)"), (2, "one rendering + one pending")):
                        fps, p50, dropped = await live_fps(url, settings.token, live_size, seconds, outstanding)
                        out.append(f"{label}, {how}: {fps:.1f} frames/s, latency p50 {p50:.0f} ms, "
                                   f"{dropped} replaced while pending (stale, never rendered)")
            return out

        started = time.perf_counter()
        sections = {"sd15": (f"SD1.5 {sd_size}² ({steps} steps)", sd15), "sdxl": (f"SDXL {xl_size}² ({steps} steps)", sdxl),
                    "live": (f"SD-Turbo architecture {live_size}², one-step img2img live session (TAESD)", live)}
        for key in args.only:
            await section(*sections[key])
    print(f"\nsummary ({time.perf_counter() - started:.0f} s):")
    for line in results:
        print(f"  {line}")
    if reduced:
        print("  (reduced mode: narrow models at small sizes; the figures say the script works, not how fast)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", default=os.environ.get("LATENTBRIDGE_BENCH_REDUCED") == "1",
                        help="narrow models, small sizes, few steps (any device; env LATENTBRIDGE_BENCH_REDUCED=1)")
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--steps", type=int, default=30, help="steps of the timed jobs (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per figure (medians; default 3)")
    parser.add_argument("--live-seconds", type=float, default=6.0, help="seconds each live measure runs")
    parser.add_argument("--only", nargs="+", choices=("sd15", "sdxl", "live"), default=["sd15", "sdxl", "live"],
                        help="the sections to run (default all, in this order)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variants")
    args = parser.parse_args()
    _quiet()
    if not args.reduced and not torch.cuda.is_available():
        print("no CUDA device: the figures need one; run with LATENTBRIDGE_BENCH_REDUCED=1 to check the script",
              file=sys.stderr)
        return 2
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
