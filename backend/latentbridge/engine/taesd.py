"""TAESD (`AutoencoderTiny`): the tiny autoencoder for previews and live frames, one per family.

`settings.taesd` serves SD1/SD2 (and SD3/Flux with a TAESD3 / TAEF1), `settings.taesdxl` SDXL:
SD1's TAESD reads SDXL latents with the wrong colours, so they are separate. `tiny-taesd` is a
random one built in code (engine/tiny.py) that fits whatever latents the model makes, for tests.
A TAESD whose latent channels do not fit the model is not used (None, with a warning).
"""

from __future__ import annotations

import logging

from ..settings import Settings
from . import tiny

log = logging.getLogger(__name__)


class TaesdCache:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._loaded: dict[tuple, object] = {}
        self._failed: set[tuple] = set()

    def clear(self) -> None:
        self._loaded.clear()

    def name_for(self, family: str) -> str | None:
        return self.settings.taesdxl if family == "sdxl" else self.settings.taesd

    def get(self, model):
        """The TAESD for the loaded model, on its device and dtype; None when none is configured
        or it cannot be had."""
        name = self.name_for(model.family)
        if not name:
            return None
        key = (name, id(model))
        if key in self._loaded:
            return self._loaded[key]
        if key in self._failed:
            return None
        vae_config = model.base.vae.config
        if name == tiny.TINY_TAESD:
            taesd = tiny.build_tiny_taesd(vae_config.latent_channels, getattr(vae_config, "shift_factor", 0.0) or 0.0,
                                          getattr(vae_config, "scaling_factor", 1.0) if model.family in ("sd3", "flux") else 1.0)
        else:
            from diffusers import AutoencoderTiny

            try:
                taesd = AutoencoderTiny.from_pretrained(name, dtype=model.dtype, local_files_only=self.settings.offline)
            except (OSError, ValueError) as exc:
                log.warning("could not load TAESD %s: %s", name, exc)
                self._failed.add(key)
                return None
        if taesd.config.latent_channels != vae_config.latent_channels:
            # e.g. SD1's TAESD (4 channels) configured while an SD3/Flux model (16) is loaded
            log.warning("TAESD %s does not fit %s latents (%d channels, not %d): not used", name, model.family,
                        taesd.config.latent_channels, vae_config.latent_channels)
            self._failed.add(key)
            return None
        taesd = taesd.to(model.device)
        if taesd.dtype != model.dtype:
            taesd = taesd.to(dtype=model.dtype)
        self._loaded = {key: taesd}  # one model at a time: the previous model's TAESD goes
        return taesd
