"""The model folders (`--model-dirs`): what they hold, and the one rule for names from a remote
client. Torch-free, so the server checks a name at submit time with the same rule the engine
applies when it loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .protocol import UnknownModel
from .settings import Settings

SAFE_WEIGHTS = (".safetensors",)
PICKLE_WEIGHTS = (".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelEntry:
    name: str  # what a client sends
    kind: str  # "diffusers" (a folder), "single_file", or "pickle" (a single file, listed only when allowed)
    path: Path


def inside(path: Path, base: Path) -> bool:
    """Whether `path`, symlinks resolved, lies inside `base`."""
    try:
        path.resolve().relative_to(base.resolve())
    except (ValueError, OSError):
        return False
    return True


def find(name: str, settings: Settings) -> Path:
    """A remote client's model name → its folder or file inside one of the model folders. No
    absolute paths, nothing that resolves outside a folder (`..`, symlinks), no hub ids."""
    if not name.strip() or Path(name).is_absolute() or "\\" in name:
        raise UnknownModel(f"model {name!r}: remote clients name models relative to the model folders, not by path",
                           field="model")
    for base in settings.model_dirs:
        candidate = Path(base) / name
        if not inside(candidate, Path(base)):
            raise UnknownModel(f"model {name!r} is outside the configured model folders", field="model")
        if candidate.exists():
            return candidate
    listed = ", ".join(str(d) for d in settings.model_dirs) or "none configured (--model-dirs)"
    raise UnknownModel(f"unknown model {name!r}: remote clients may use a built-in model, the loaded model, or a "
                       f"model inside the model folders ({listed}); GET /api/v1/models lists them", field="model")


def entries(settings: Settings) -> list[ModelEntry]:
    """The models the folders hold: diffusers folders, .safetensors files, and pickle files when
    the user allowed them."""
    found = []
    for base in settings.model_dirs:
        base = Path(base)
        if not base.is_dir():
            continue
        for entry in sorted(base.iterdir()):
            suffix = entry.suffix.lower()
            if entry.is_dir() and (entry / "model_index.json").exists():
                found.append(ModelEntry(entry.name, "diffusers", entry))
            elif entry.is_file() and suffix in SAFE_WEIGHTS:
                found.append(ModelEntry(entry.name, "single_file", entry))
            elif entry.is_file() and suffix in PICKLE_WEIGHTS and settings.allow_pickle:
                found.append(ModelEntry(entry.name, "pickle", entry))
    return found


def lora_entries(settings: Settings) -> list[str]:
    """LoRA file names a remote client may use (`.safetensors` files directly inside `lora_dirs`,
    the names `check_lora_names` admits), sorted, each once."""
    names: set[str] = set()
    for base in settings.lora_dirs:
        base = Path(base)
        if base.is_dir():
            names.update(e.name for e in base.iterdir() if e.is_file() and e.suffix.lower() in SAFE_WEIGHTS)
    return sorted(names)
