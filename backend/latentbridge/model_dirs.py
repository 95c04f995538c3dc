"""The model folders (`--model-dirs`): what they hold, and the one rule for names from a remote
client. Torch-free, so the server checks a name at submit time with the same rule the engine
applies when it loads.

A model's name is its path relative to the model folder that holds it, with `/` separators:
`dreamshaper-8` (a diffusers folder), `model.safetensors`, `sdxl/juggernaut.safetensors`. The
listing and the loader use the same names, so anything `GET /api/v1/models` lists loads by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .protocol import UnknownModel
from .settings import Settings

SAFE_WEIGHTS = (".safetensors",)
PICKLE_WEIGHTS = (".ckpt", ".pt", ".pth", ".bin")
NAME_MAX = 255  # bytes in one path component on every common file system
MAX_DEPTH = 4  # sub-folder levels searched below a model folder
IP_ADAPTER_ENCODER = "image_encoder"  # the image encoder's folder beside an IP-Adapter file (h94's layout)


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


def local_path(name: str, dirs: list[Path]) -> Path | None:
    """For a caller on this machine: `name` inside one of `dirs` (never escaping it), else `name`
    as a path here; None when neither exists."""
    for base in dirs:
        candidate = Path(base) / name
        if inside(candidate, Path(base)) and candidate.exists():
            return candidate
    path = Path(name).expanduser()
    return path if path.exists() else None


def name_fits(name: str) -> bool:
    """Whether every component of `name` could be a file name (at most NAME_MAX bytes of UTF-8)."""
    return all(len(part.encode("utf-8", "surrogatepass")) <= NAME_MAX for part in name.replace("\\", "/").split("/"))


def check_file_name(name: str, field: str, what: str = "model") -> None:
    """Refuse a name that no file system could hold (a component over 255 bytes): it names nothing,
    and asking the OS about it would fail with ENAMETOOLONG."""
    if not name_fits(name):
        raise UnknownModel(f"unknown {what} {name[:60]!r}…: no file has a name longer than {NAME_MAX} bytes",
                           field=field)


def _is_diffusers_folder(path: Path) -> bool:
    """A diffusers model folder: model_index.json and at least one component with weights (a folder
    holding only configs is the config of a single-file checkpoint, not a model)."""
    if not (path / "model_index.json").is_file():
        return False
    suffixes = SAFE_WEIGHTS + PICKLE_WEIGHTS
    return any(f.suffix.lower() in suffixes for component in path.iterdir() if component.is_dir()
               for f in component.iterdir() if f.is_file())


def find(name: str, settings: Settings, *, dirs: list[Path] | None = None, field: str = "model",
         what: str = "model", flag: str = "--model-dirs") -> Path:
    """A remote client's model name → its folder or file inside one of the model folders (or the
    given `dirs`, e.g. the ControlNet folders). No absolute paths, nothing that resolves outside a
    folder (`..`, symlinks), no hub ids."""
    dirs = settings.model_dirs if dirs is None else dirs
    check_file_name(name, field, what)
    if not name.strip() or Path(name).is_absolute() or "\\" in name:
        raise UnknownModel(f"{what} {name!r}: remote clients name {what}s relative to the {what} folders, not by path",
                           field=field)
    for base in dirs:
        candidate = Path(base) / name
        if not inside(candidate, Path(base)):
            raise UnknownModel(f"{what} {name!r} is outside the configured {what} folders", field=field)
        if candidate.exists():
            return candidate
    listed = ", ".join(str(d) for d in dirs) or f"none configured ({flag})"
    hint = "; GET /api/v1/models lists them" if what == "model" else ""
    raise UnknownModel(f"unknown {what} {name!r}: remote clients may use a built-in {what}, the loaded or configured "
                       f"one, or a {what} inside the {what} folders ({listed}){hint}", field=field)


def canonical_name(name: str) -> str:
    """`sub//x.safetensors`, `./x` → `sub/x.safetensors`, `x`: one spelling per model."""
    return PurePosixPath(name.strip()).as_posix()


def entries(settings: Settings) -> list[ModelEntry]:
    """The models the folders hold, sub-folders included: diffusers folders, .safetensors files, and
    pickle files when the user allowed them. Names are relative to their model folder."""
    found = []
    for base in settings.model_dirs:
        base = Path(base)
        if base.is_dir():
            found += _scan(base, base, 0, settings.allow_pickle)
    return found


def _scan(base: Path, folder: Path, depth: int, allow_pickle: bool) -> list[ModelEntry]:
    found = []
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return found
    for entry in children:
        if entry.name.startswith(".") or not inside(entry, base):
            continue
        name = entry.relative_to(base).as_posix()
        suffix = entry.suffix.lower()
        if entry.is_dir():
            if _is_diffusers_folder(entry):
                found.append(ModelEntry(name, "diffusers", entry))
            elif depth + 1 < MAX_DEPTH and not (entry / "model_index.json").exists():
                found += _scan(base, entry, depth + 1, allow_pickle)
        elif entry.is_file() and suffix in SAFE_WEIGHTS:
            found.append(ModelEntry(name, "single_file", entry))
        elif entry.is_file() and suffix in PICKLE_WEIGHTS and allow_pickle:
            found.append(ModelEntry(name, "pickle", entry))
    return found


def component_entries(dirs: list[Path]) -> list[ModelEntry]:
    """Single models (ControlNets, IP-Adapters) in `dirs`: folders with a config.json and weights,
    .safetensors files, and IP-Adapter files (kind `ip_adapter`; their image encoder folder, which
    has a config.json, is not listed as a model); names relative to their folder, as for `entries`."""
    found = []
    for base in map(Path, dirs):
        if not base.is_dir():
            continue
        for entry in sorted(base.rglob("*")):
            if entry.name.startswith(".") or not inside(entry, base) or len(entry.relative_to(base).parts) > MAX_DEPTH:
                continue
            name = entry.relative_to(base).as_posix()
            if entry.is_dir() and entry.name != IP_ADAPTER_ENCODER and (entry / "config.json").is_file() and any(
                    f.suffix.lower() in SAFE_WEIGHTS for f in entry.iterdir()):
                found.append(ModelEntry(name, "diffusers", entry))
            elif entry.is_file() and entry.suffix.lower() in SAFE_WEIGHTS and is_ip_adapter_file(entry):
                found.append(ModelEntry(name, "ip_adapter", entry))
            elif entry.is_file() and entry.suffix.lower() in SAFE_WEIGHTS and not (entry.parent / "config.json").exists():
                found.append(ModelEntry(name, "single_file", entry))
    return found


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors file's header (read without torch or the tensor data);
    [] for a file that is not valid safetensors."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 * 1024 * 1024:
                return []
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return []
    return [key for key in header if key != "__metadata__"] if isinstance(header, dict) else []


def is_ip_adapter_file(path: Path) -> bool:
    """An IP-Adapter weights file (h94/IP-Adapter layout: `image_proj.*` and `ip_adapter.*` tensors)."""
    keys = safetensors_keys(path)
    return any(k.startswith("ip_adapter.") for k in keys) and any(k.startswith("image_proj.") for k in keys)


def weight_files(folders: list[Path], allow_pickle: bool, *, recursive: bool = True) -> list[Path]:
    """The weights files in `folders` (LoRAs, upscalers, embeddings, VAEs...), sorted per folder:
    .safetensors always, pickle files only when the user allowed them."""
    suffixes = SAFE_WEIGHTS + (PICKLE_WEIGHTS if allow_pickle else ())
    found = []
    for base in folders:
        base = Path(base)
        if base.is_dir():
            paths = base.rglob("*") if recursive else base.iterdir()
            found += [p for p in sorted(paths) if p.is_file() and p.suffix.lower() in suffixes]
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
