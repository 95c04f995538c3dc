"""Step caching: reuse the deep layers' work between denoising steps (an opt-in quality/speed trade).

- UNet models (SD1/SD2/SDXL), DeepCache-style (Ma et al., "DeepCache", 2023): the features a
  UNet's deep blocks compute change little from one step to the next, so on all but every
  `interval`-th step only the shallowest blocks run (conv_in, the first down block, the last up
  block); every deeper block hands back what it returned at the last full step. diffusers has no
  hook for UNets, so the blocks' forwards are wrapped here (and unwrapped by `remove`).
- Transformer models that support diffusers' caches (Flux): its First Block Cache
  (`enable_cache(FirstBlockCacheConfig)`): while the first block's output changes less than
  `threshold`, the other blocks are skipped. SD3's transformer supports none (ValueError).

Both are per generation: `generation()` forgets the previous generation's features.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

log = logging.getLogger(__name__)


class UNetStepCache:
    """DeepCache on a `UNet2DConditionModel`: one full step every `interval` UNet calls."""

    def __init__(self, unet, interval: int):
        if len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2:
            raise ValueError("the UNet has too few blocks to cache the deep ones")
        self.unet = unet
        self.interval = interval
        self.calls = 0
        self.full_calls = 0
        self.skipped_calls = 0
        self._skip = False
        self._shape: tuple | None = None  # input shape of the last full call (what the cache holds)
        self._cache: dict[str, object] = {}
        self._wrapped: list[tuple[torch.nn.Module, bool]] = []
        deep = [("down", i, b) for i, b in enumerate(unet.down_blocks) if i > 0] + [("mid", 0, unet.mid_block)]
        deep += [("up", i, b) for i, b in enumerate(unet.up_blocks) if i < len(unet.up_blocks) - 1]
        for kind, index, block in deep:
            if block is not None:
                self._wrap(block, f"{kind}.{index}")
        self._wrap(unet, "", top=True)

    def _wrap(self, module: torch.nn.Module, name: str, top: bool = False) -> None:
        had_own = "forward" in module.__dict__
        original = module.forward

        @functools.wraps(original)
        def forward(*args, **kwargs):
            if top:
                return self._step(original, args, kwargs)
            if self._skip and name in self._cache:
                return self._cache[name]
            out = original(*args, **kwargs)
            self._cache[name] = out
            return out

        module.forward = forward
        self._wrapped.append((module, had_own))

    def _step(self, original, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else None
        self._skip = (self.calls % self.interval != 0 and shape is not None and shape == self._shape
                      and bool(self._cache))
        self.calls += 1
        if self._skip:
            self.skipped_calls += 1
        else:
            self.full_calls += 1
            self._cache.clear()
            self._shape = shape
        try:
            return original(*args, **kwargs)
        finally:
            self._skip = False

    @contextlib.contextmanager
    def generation(self):
        """One generation: its first step runs in full, and nothing is kept after it."""
        self.calls = 0
        self._cache.clear()
        self._shape = None
        try:
            yield
        finally:
            self._cache.clear()

    def remove(self) -> None:
        for module, had_own in self._wrapped:
            if not had_own:
                del module.forward
        self._wrapped.clear()
        self._cache.clear()


class TransformerStepCache:
    """diffusers' First Block Cache on a transformer that supports diffusers' caches (Flux; its
    pipelines name the cache context of each denoiser call)."""

    def __init__(self, transformer, threshold: float):
        from diffusers.hooks import FirstBlockCacheConfig

        if not hasattr(transformer, "enable_cache"):
            raise ValueError(f"diffusers has no step cache for {type(transformer).__name__}")
        self.transformer = transformer
        transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))

    @contextlib.contextmanager
    def generation(self):
        from diffusers.hooks import HookRegistry

        HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks()
        yield

    def remove(self) -> None:
        self.transformer.disable_cache()


def step_cache_for(model, interval: int, threshold: float):
    """The step cache for a loaded model's denoiser; ValueError when it has none."""
    denoiser = model.denoiser()
    if getattr(model.base, "unet", None) is not None:
        return UNetStepCache(denoiser, interval)
    return TransformerStepCache(denoiser, threshold)
