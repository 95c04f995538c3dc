"""A VAE other than the model's own, for one request (`request.vae`), as A1111's `sd_vae`.

VAEs come from `--vae-dirs`: a diffusers VAE folder (config.json + weights), or a single
.safetensors file in either layout: diffusers' key names or the original (LDM) ones A1111's VAE
files use, converted with diffusers' own converter. A single file takes the architecture of the
loaded model's VAE, so a VAE made for another family is refused with a clear error rather than
half loaded. Pickle files (.pt/.ckpt/.bin) only with --allow-pickle.

The override swaps the `vae` of the model's pipelines (they share one object) for the duration of
the request; the last override used stays loaded.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from ..model_dirs import SAFE_WEIGHTS, inside, weight_files
from ..protocol import ErrorCode, LatentBridgeError
from ..settings import Settings

log = logging.getLogger(__name__)

_LDM_PREFIXES = ("encoder.down.", "decoder.up.", "first_stage_model.", "vae.encoder.down.")


def vae_entries(settings: Settings) -> dict[str, Path]:
    """name (relative to its folder) → path of every VAE in the folders: .safetensors files,
    diffusers VAE folders, and pickle files when the user allowed them."""
    found: dict[str, Path] = {}
    for base in map(Path, settings.vae_dirs):
        folders = [p.parent for p in sorted(base.rglob("config.json")) if p.parent != base] if base.is_dir() else []
        files = [p for p in weight_files([base], settings.allow_pickle) if p.parent not in folders]
        for path in sorted(folders + files):
            found.setdefault(path.relative_to(base).as_posix(), path)
    return found


def resolve_vae(name: str, settings: Settings, *, local: bool) -> Path:
    """A VAE name → its file or folder. Remote clients name VAEs inside the VAE folders only;
    `local` callers (the CLI) may also give a path."""
    entries = vae_entries(settings)
    if name in entries:
        return entries[name]
    for base in settings.vae_dirs:
        candidate = Path(base) / name
        if not inside(candidate, Path(base)):
            if not local:
                raise LatentBridgeError(f"VAE {name!r} is outside the VAE folders", field="vae", code=ErrorCode.invalid_request)
            continue
        if candidate.exists():
            return candidate
    if local and Path(name).expanduser().exists():
        return Path(name).expanduser()
    where = ", ".join(str(d) for d in settings.vae_dirs) or "no --vae-dirs configured"
    raise LatentBridgeError(f"VAE {name!r} not found ({where})", field="vae", code=ErrorCode.invalid_request)


class VaeOverrides:
    """Loads override VAEs (keeping the last one) and swaps them into a loaded model."""

    def __init__(self, settings: Settings, *, local: bool):
        self.settings = settings
        self.local = local
        self._lock = threading.Lock()
        self._loaded: tuple[tuple, object] | None = None

    @contextmanager
    def applied(self, model, name: str | None):
        """`model` (engine.models.LoadedModel) decodes and encodes with the VAE called `name` inside
        the block; None keeps its own."""
        if not name:
            yield
            return
        own = model.base.vae
        vae = self._load(resolve_vae(name, self.settings, local=self.local), own)
        pipes = [model.base, *model.pipes.values()]
        for pipe in pipes:
            pipe.vae = vae
        try:
            yield
        finally:
            for pipe in pipes:
                pipe.vae = own

    def _load(self, path: Path, reference):
        if path.is_file() and path.suffix.lower() not in SAFE_WEIGHTS and not self.settings.allow_pickle:
            raise LatentBridgeError(f"VAE {path.name} is a pickle file, which can run code when loaded: convert it to "
                                    ".safetensors, or start with --allow-pickle", field="vae", code=ErrorCode.unsupported)
        param = next(reference.parameters())
        key = (str(path), path.stat().st_mtime, type(reference).__name__, repr(dict(reference.config)), param.device, param.dtype)
        with self._lock:
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            self._loaded = None
            vae = load_vae(path, reference, self.settings.allow_pickle).to(param.device, param.dtype).eval()
            self._loaded = (key, vae)
            return vae


def load_vae(path: Path, reference, allow_pickle: bool = False):
    """A VAE from a diffusers folder, or from one file into `reference`'s architecture."""
    from diffusers import AutoencoderKL

    try:
        if path.is_dir():
            # allow_pickle permits pickle weights where no safetensors exist; it never prefers them.
            vae = AutoencoderKL.from_pretrained(str(path), use_safetensors=None if allow_pickle else True)
        else:
            state = _read_weights(path)
            if any(k.startswith(_LDM_PREFIXES) for k in state):
                from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

                state = convert_ldm_vae_checkpoint(state, dict(reference.config))
            vae = type(reference).from_config(reference.config)
            own = set(vae.state_dict())
            missing = own - set(state)
            if missing:
                raise LatentBridgeError(
                    f"VAE {path.name} does not fit this model's VAE: {len(missing)} of its {len(own)} weights are missing "
                    f"(e.g. {sorted(missing)[0]})", field="vae", code=ErrorCode.invalid_request)
            vae.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    except LatentBridgeError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        text = str(exc).strip().splitlines()
        raise LatentBridgeError(f"VAE {path.name} could not be loaded: {text[0][:200] if text else type(exc).__name__}",
                                field="vae", code=ErrorCode.invalid_request) from None
    if getattr(vae.config, "latent_channels", None) != getattr(reference.config, "latent_channels", None):
        raise LatentBridgeError(f"VAE {path.name} makes {vae.config.latent_channels}-channel latents; this model uses "
                                f"{reference.config.latent_channels}", field="vae", code=ErrorCode.invalid_request)
    log.info("VAE override %s loaded", path.name)
    return vae


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() in SAFE_WEIGHTS:
        from safetensors.torch import load_file

        return load_file(str(path))
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    return data.get("state_dict", data) if isinstance(data, dict) else {}


def vae_listing(settings: Settings) -> list[dict[str, str]]:
    """A1111's `/sd-vae`: one {model_name, filename} per VAE."""
    return [{"model_name": name, "filename": str(path)} for name, path in vae_entries(settings).items()]
