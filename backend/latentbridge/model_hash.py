"""AUTOMATIC1111's model hashes, computed once per file and cached (torch-free).

A1111 names a checkpoint `name.safetensors [abcdef1234]`: the first 10 hex digits of the SHA-256
of the whole file (`sd_model_hash`, the `hash` of /sd-models; the full digest is `sha256`). LoRA
hashes in infotexts are the "addnet" hash: the SHA-256 of a .safetensors file after its header
(so editing the metadata keeps the hash), 12 digits. A diffusers folder hashes as the digest of its
weight files' digests; a model with no local files (a built-in random model, a hub id not yet
downloaded) hashes its name, so every model has a stable hash.

Hashing a multi-GB file takes seconds, so each digest is kept in a JSON cache file (keyed by path,
size and modification time) and computed again only when the file changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SHORT = 10  # digits of A1111's short model hash
ADDNET_SHORT = 12  # digits of a LoRA hash in A1111's infotext
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def sha256_file(path: Path, offset: int = 0) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safetensors_header_length(path: Path) -> int:
    """Bytes before a .safetensors file's tensor data: the u64 header size plus the header."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"{path.name} is too short for a .safetensors file")
    return 8 + int.from_bytes(head, "little")


def name_hash(name: str) -> str:
    """The hash of a model that has no local files: of its name."""
    return hashlib.sha256(f"latentbridge-model:{name}".encode()).hexdigest()


class HashCache:
    """SHA-256 digests of model files, kept in `cache_file` (None: in memory only). Thread-safe."""

    def __init__(self, cache_file: Path | None):
        self.cache_file = cache_file
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        if self.cache_file is None or not self.cache_file.exists():
            return {}
        try:
            data = json.loads(self.cache_file.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring the hash cache %s: %s", self.cache_file, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self) -> None:
        if self.cache_file is None:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, prefix=".hashes.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(self._entries, f)
            os.replace(tmp, self.cache_file)
        except OSError as exc:
            log.warning("could not write the hash cache %s: %s", self.cache_file, exc)

    @staticmethod
    def _key(path: Path, kind: str) -> tuple[str, dict]:
        stat = path.stat()
        return f"{kind}:{path.resolve()}", {"size": stat.st_size, "mtime": stat.st_mtime}

    def cached(self, path: Path, kind: str = "sha256") -> str | None:
        """The digest if it is known for the file as it is now; never computes."""
        try:
            key, stamp = self._key(path, kind)
        except OSError:
            return None
        with self._lock:
            entry = self._entries.get(key)
        if entry and entry.get("size") == stamp["size"] and entry.get("mtime") == stamp["mtime"]:
            return entry.get("digest")
        return None

    def digest(self, path: Path, kind: str = "sha256") -> str:
        """The digest of a file ("sha256" of the whole file, or "addnet": after a .safetensors
        header) or of a diffusers folder; computed once, then cached. Blocking."""
        found = self.cached(path, kind)
        if found is not None:
            return found
        key, stamp = self._key(path, kind)
        if path.is_dir():
            value = self._folder_digest(path)
        elif kind == "addnet" and path.suffix.lower() == ".safetensors":
            value = sha256_file(path, safetensors_header_length(path))
        else:
            value = sha256_file(path)
        with self._lock:
            self._entries[key] = {**stamp, "digest": value}
            self._write()
        return value

    def _folder_digest(self, folder: Path) -> str:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
        joined = "\n".join(f"{p.relative_to(folder).as_posix()}:{self.digest(p)}" for p in files)
        return hashlib.sha256(joined.encode()).hexdigest()


def legacy_short_hash(path: Path) -> str:
    """A1111's old 8-digit model hash (`sd_models.model_hash`), which sd-webui-controlnet writes after
    its model names (`control_v11p_sd15_canny [d14c016b]`): the SHA-256 of 64 KiB at 1 MiB into the
    file. Cheap, so it is not cached."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        digest.update(f.read(0x10000))
    return digest.hexdigest()[:8]


def short(digest: str | None, length: int = SHORT) -> str | None:
    return digest[:length] if digest else None


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (tensor names → dtype/shape/offsets, `__metadata__`),
    read without loading any tensor. {} when it is unreadable."""
    try:
        length = safetensors_header_length(path) - 8
        if length > 100 * 1024 * 1024:
            return {}
        with open(path, "rb") as f:
            f.seek(8)
            header = json.loads(f.read(length))
    except (OSError, ValueError):
        return {}
    return header if isinstance(header, dict) else {}


def safetensors_metadata(path: Path) -> dict:
    """The `__metadata__` of a .safetensors file (strings; JSON objects in them parsed, as A1111
    shows LoRA metadata). {} when there is none or it is unreadable."""
    metadata = safetensors_header(path).get("__metadata__")
    if not isinstance(metadata, dict):
        return {}
    out = {}
    for key, value in metadata.items():
        if isinstance(value, str) and value[:1] == "{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[str(key)] = value
    return out
