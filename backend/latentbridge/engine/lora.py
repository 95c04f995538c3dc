"""LoRA files: resolved safely, applied for one request, removed afterwards.

`applied_loras` loads each LoRA as a named adapter, sets the requested weights, and unloads them
all when the request ends (even when it fails or is cancelled), so the next request runs on the
untouched base weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..protocol import ErrorCode, LatentBridgeError, LoraSpec
from ..settings import Settings
from ..model_dirs import PICKLE_WEIGHTS, SAFE_WEIGHTS, inside
from .models import check_weights_file


def resolve_lora(name: str, settings: Settings, *, local: bool) -> Path:
    """A LoRA name → its file. Names resolve inside `settings.lora_dirs` (with or without the
    .safetensors suffix); `local` callers (the CLI) may also give any path."""
    for base in settings.lora_dirs:
        base = Path(base).resolve()
        for candidate in (base / name, base / (name + ".safetensors")):
            if not inside(candidate, base):
                if local:  # a local caller's own path: looked up as given below
                    continue
                raise LatentBridgeError(f"LoRA {name!r} is outside the LoRA folders", field="loras", code=ErrorCode.invalid_request)
            if candidate.is_file():
                return candidate
    if local:
        path = Path(name).expanduser()
        if path.is_file():
            return path
    where = ", ".join(str(d) for d in settings.lora_dirs) or "no --lora-dirs configured"
    raise LatentBridgeError(f"LoRA {name!r} not found ({where})", field="loras", code=ErrorCode.invalid_request)


def load_loras(pipe, loras: list[LoraSpec], settings: Settings, *, local: bool, prefix: str = "latentbridge") -> list[str]:
    """Load each LoRA as a named adapter (`<prefix>_<i>`) and set the requested weights; returns
    the adapter names. On failure the adapters loaded so far are removed again (`unload_loras`)."""
    adapters: list[str] = []
    try:
        for index, spec in enumerate(loras):
            path = resolve_lora(spec.name, settings, local=local)
            if path.suffix.lower() not in SAFE_WEIGHTS + PICKLE_WEIGHTS:
                raise LatentBridgeError(f"LoRA {path.name}: expected a .safetensors file", field="loras", code=ErrorCode.invalid_request)
            check_weights_file(path, settings.allow_pickle, what="LoRA")
            adapter = f"{prefix}_{index}"
            # Counted before loading: a load that fails half-way may have injected layers already.
            adapters.append(adapter)
            try:
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
            except (ValueError, KeyError, OSError, RuntimeError) as exc:
                raise LatentBridgeError(
                    f"LoRA {path.name} could not be applied to this model: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}",
                    field="loras",
                    code=ErrorCode.invalid_request,
                ) from None
        pipe.set_adapters(adapters, adapter_weights=[spec.weight for spec in loras])
    except BaseException:
        if adapters:
            unload_loras(pipe)
        raise
    return adapters


def unload_loras(pipe) -> None:
    """Remove every LoRA layer: the base modules are back as they were."""
    pipe.unload_lora_weights()


@contextmanager
def applied_loras(pipe, loras: list[LoraSpec], settings: Settings, *, local: bool):
    if not loras:
        yield
        return
    load_loras(pipe, loras, settings, local=local)
    try:
        yield
    finally:
        unload_loras(pipe)
