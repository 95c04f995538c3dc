"""Speed options (settings `attention`, `channels_last`, `fused_qkv`, `compile`, `compile_sizes`,
`cuda_graphs`, `step_cache`): applied to a model once it is placed on its device.

Each option is skipped where it cannot help or does not apply, and says so (`Accel.report`):
channels_last, torch.compile and CUDA graphs need a CUDA device (on CPU they would only change
the rounding); eager attention is for UNet models. Fused q/k/v projections and the step cache
work everywhere (tests check them on CPU).

torch.compile is warmed up at load, not on the first request: the denoiser is compiled for the
latent shapes of `compile_sizes` (with and without classifier-free guidance, i.e. batch 2 and 1),
and only those shapes run compiled; any other size runs the eager module, so no request ever
triggers a recompile. A live session adds its own size when it starts (`warm_size`). CUDA graphs
(torch.compile's reduce-overhead mode) replay the compiled shapes without kernel launch overhead;
outputs are copied out of the graph's memory, so schedulers that keep earlier outputs (DPM++)
stay correct.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Callable

import torch

from ..settings import Settings, parse_size
from .stepcache import step_cache_for

log = logging.getLogger(__name__)

UNET_FAMILIES = ("sd1", "sd2", "sdxl")


class Accel:
    """The speed options in force on one loaded model."""

    def __init__(self, model, settings: Settings):
        self.model = model
        self.settings = settings
        self.report: dict[str, str] = {}  # option → what was done ("on", "off", "skipped: why")
        self.step_cache = None
        self.compiled: _CompiledDenoiser | None = None
        self._fused = False
        self._unfuse_holds = 0

    # ------------------------------------------------------------------ applying at load

    def apply(self) -> "Accel":
        s, model = self.settings, self.model
        cuda = model.device.type == "cuda"
        self._attention(s.attention)
        if s.channels_last:
            if cuda:
                for module in (model.denoiser(), model.base.vae):
                    module.to(memory_format=torch.channels_last)
                self.report["channels_last"] = "on"
            else:
                self.report["channels_last"] = f"skipped: needs CUDA (device {model.device.type})"
        if s.fused_qkv:
            self._fuse()
        if s.step_cache == "on":
            try:
                self.step_cache = step_cache_for(model, s.step_cache_interval, s.step_cache_threshold)
                self.report["step_cache"] = "on"
            except ValueError as exc:
                self.report["step_cache"] = f"skipped: {exc}"
        graphs = s.cuda_graphs
        if s.compile != "off" or graphs:
            if not cuda:
                self.report["compile"] = f"skipped: needs CUDA (device {model.device.type})"
            elif self.step_cache is not None:
                self.report["compile"] = "skipped: off while step_cache is on (its wrapped blocks do not trace)"
            else:
                self.compiled = _CompiledDenoiser(model.denoiser(), _compile_mode(s.compile, graphs), graphs)
                self.report["compile"] = f"on ({_compile_mode(s.compile, graphs)})"
        for name, value in self.report.items():
            log.info("speed option %s: %s", name, value)
        return self

    def _attention(self, kind: str) -> None:
        if kind == "sdpa":
            return  # diffusers' default processors use torch's scaled_dot_product_attention
        if self.model.family not in UNET_FAMILIES:
            self.report["attention"] = f"skipped: eager attention is for UNet models, not {self.model.family}"
            return
        from diffusers.models.attention_processor import AttnProcessor

        for module in (self.model.denoiser(), self.model.base.vae):
            module.set_attn_processor(AttnProcessor())
        self.report["attention"] = "eager"

    def _fuse(self) -> None:
        base = self.model.base
        if not hasattr(base, "fuse_qkv_projections"):
            self.report["fused_qkv"] = f"skipped: {type(base).__name__} cannot fuse its projections"
            return
        base.fuse_qkv_projections()
        self._fused = True
        self.report["fused_qkv"] = "on"

    # ------------------------------------------------------------------ while generating

    def unfuse(self) -> None:
        """LoRAs are about to be loaded: they target the separate q/k/v projections."""
        self._unfuse_holds += 1
        if self._fused and self._unfuse_holds == 1:
            self.model.base.unfuse_qkv_projections()

    def refuse(self) -> None:
        self._unfuse_holds = max(0, self._unfuse_holds - 1)
        if self._fused and self._unfuse_holds == 0:
            self.model.base.fuse_qkv_projections()

    @contextlib.contextmanager
    def lora_ready(self, active: bool):
        """A request's LoRAs apply inside: fused projections are undone, and the compiled
        denoiser is bypassed (a LoRA changes the module, which would recompile it)."""
        if not active:
            yield
            return
        self.unfuse()
        bypass = self.compiled.bypassed() if self.compiled is not None else contextlib.nullcontext()
        try:
            with bypass:
                yield
        finally:
            self.refuse()

    @contextlib.contextmanager
    def generation(self):
        """Around one generation's denoising calls: a fresh step cache."""
        with self.step_cache.generation() if self.step_cache is not None else contextlib.nullcontext():
            yield

    # ------------------------------------------------------------------ compile warm-up

    def warm_up(self, run: Callable[[int, int, float], None]) -> None:
        """Compile the `compile_sizes` (default: the native square size): `run(width, height,
        guidance)` generates once at that size, with guidance 7 and 0 (batch 2 and 1 shapes)."""
        if self.compiled is None:
            return
        sizes = [parse_size(s) for s in self.settings.compile_sizes] or [(self.model.native_size,) * 2]
        for width, height in sizes:
            self.warm_size(run, width, height, guidances=(7.0, 0.0))

    def warm_size(self, run: Callable[[int, int, float], None], width: int, height: int,
                  guidances: tuple[float, ...] = (7.0, 0.0)) -> None:
        if self.compiled is None:
            return
        for guidance in guidances:
            with self.compiled.warming():
                run(width, height, guidance)
        log.info("compiled the denoiser for %dx%d", width, height)


def _compile_mode(compile_setting: str, graphs: bool) -> str:
    if compile_setting == "max-autotune":
        return "max-autotune" if graphs else "max-autotune-no-cudagraphs"
    return "reduce-overhead" if graphs else "default"


class _CompiledDenoiser:
    """The denoiser's forward, compiled for the warmed latent shapes only (eager for the rest)."""

    def __init__(self, module: torch.nn.Module, mode: str, graphs: bool):
        self.module = module
        self.graphs = graphs
        self.shapes: set[tuple] = set()
        self._warming = False
        self._bypass = 0
        self._eager = module.forward
        self._compiled = torch.compile(self._eager, mode=mode, dynamic=False)

        @functools.wraps(self._eager)
        def forward(*args, **kwargs):
            return self._call(args, kwargs)

        module.forward = forward

    def _call(self, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else None
        if self._bypass or shape is None or (shape not in self.shapes and not self._warming):
            return self._eager(*args, **kwargs)
        if self._warming:
            self.shapes.add(shape)
        if not self.graphs:
            return self._compiled(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        return _copied(self._compiled(*args, **kwargs))

    @contextlib.contextmanager
    def warming(self):
        self._warming = True
        try:
            yield
        finally:
            self._warming = False

    @contextlib.contextmanager
    def bypassed(self):
        self._bypass += 1
        try:
            yield
        finally:
            self._bypass -= 1


def _copied(output):
    """A CUDA graph's outputs live in memory its next replay overwrites: copy them out."""
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, tuple):
        return tuple(_copied(o) for o in output)
    if hasattr(output, "sample") and isinstance(output.sample, torch.Tensor):
        output.sample = output.sample.clone()
    return output
