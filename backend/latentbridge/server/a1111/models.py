"""Checkpoints, VAEs, LoRAs, embeddings and memory as A1111 lists them.

A checkpoint's title is A1111's `name.safetensors [abcdef1234]` (the short SHA-256 of the file,
computed once and cached: model_hash.py). Clients may name a checkpoint by its title, file name,
name without extension, short or full hash; model switches go through the server core
(`resolve_model_name`, `JobManager.load_model`), so remote clients reach only built-ins, the
configured model and what the model folders hold.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..jsonio import json_response
from ...model_dirs import SAFE_WEIGHTS, weight_files
from ...model_hash import name_hash, safetensors_metadata, short
from ...protocol import ErrorCode, LatentBridgeError, UnknownModel
from ..security import list_models, resolve_model_name
from .errors import a1111_route
from .state import engine, jobs, settings, state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    name: str  # what the server core takes: a name inside the model folders, a built-in, the configured model
    path: Path | None  # its file or folder; None for a built-in or a hub id

    @property
    def display(self) -> str:
        """Its name as A1111 lists it: a configured path shows as its file or folder name."""
        return Path(self.name).name if Path(self.name).is_absolute() else self.name

    @property
    def model_name(self) -> str:
        return Path(self.display).stem if self.path is not None and self.path.is_file() else self.display

    @property
    def filename(self) -> str:
        return str(self.path) if self.path is not None else self.name

    def title(self, digest: str | None) -> str:
        return f"{self.display} [{short(digest)}]" if digest else self.display


def _local_path(name: str) -> Path | None:
    path = Path(os.path.expanduser(name))
    return path if path.is_absolute() and path.exists() else None


def checkpoints(app: web.Application) -> list[Checkpoint]:
    """The loaded model first, then every model in the model folders (blocking: scans them)."""
    found = [Checkpoint(m["name"], Path(m["path"])) for m in list_models(settings(app))]
    current = loaded_checkpoint(app, found)
    return [current] + [c for c in found if c != current] if current is not None else found


def loaded_checkpoint(app: web.Application, listed: list[Checkpoint] | None = None) -> Checkpoint | None:
    name = engine(app).status.name or settings(app).model
    return checkpoint_for(app, name, listed) if name else None


def checkpoint_for(app: web.Application, name: str, listed: list[Checkpoint] | None = None) -> Checkpoint:
    """The checkpoint a model name (as the engine knows it: maybe a resolved path) stands for."""
    listed = listed if listed is not None else [Checkpoint(m["name"], Path(m["path"])) for m in list_models(settings(app))]
    path = _local_path(name)
    for entry in listed:
        if entry.name == name or (path is not None and entry.path is not None and entry.path.resolve() == path.resolve()):
            return entry
    return Checkpoint(path.name if path is not None and name != settings(app).model else name, path)


def digest(app: web.Application, checkpoint: Checkpoint) -> str:
    """A1111's SHA-256 of the checkpoint (blocking the first time; cached)."""
    if checkpoint.path is None:
        return name_hash(checkpoint.name)
    return state(app).hashes.digest(checkpoint.path)


def cached_digest(app: web.Application, checkpoint: Checkpoint) -> str | None:
    if checkpoint.path is None:
        return name_hash(checkpoint.name)
    return state(app).hashes.cached(checkpoint.path)


def find_checkpoint(app: web.Application, value: str) -> Checkpoint:
    """A client's checkpoint name → the checkpoint: title, file name, name without extension, or a
    hash (A1111's 10 digits, the full SHA-256, or a prefix of at least 8); else whatever the server
    core accepts (a built-in). Blocking. Raises UnknownModel."""
    text = value.strip()
    bare = text[: text.rindex(" [")] if text.endswith("]") and " [" in text else text
    listed = checkpoints(app)
    for entry in listed:
        if bare in (entry.name, entry.display, entry.model_name, entry.filename):
            return entry
    for entry in listed:
        known = cached_digest(app, entry)
        if known and len(bare) >= 8 and known.startswith(bare.lower()):
            return entry
    loaded = engine(app).status.name
    resolved = resolve_model_name(bare, settings(app), loaded)  # raises UnknownModel naming the folders
    return checkpoint_for(app, resolved, listed)


async def switch_model(app: web.Application, checkpoint: Checkpoint) -> None:
    """Load `checkpoint` on the worker (after the running job), as POST /options does in A1111."""
    loaded = engine(app).status.name
    if checkpoint == loaded_checkpoint(app) and engine(app).status.state.value == "ready":
        return
    try:
        await jobs(app).load_model(resolve_model_name(checkpoint.name, settings(app), loaded))
    except LatentBridgeError as exc:
        if exc.field == "model":
            exc.field = "sd_model_checkpoint"
        raise
    except Exception as exc:  # noqa: BLE001 - the reason goes to the client, the server stays up
        raise LatentBridgeError(f"loading {checkpoint.name!r} failed ({type(exc).__name__})", field="sd_model_checkpoint",
                                code=ErrorCode.model_load_failed) from None


async def hash_in_background(app: web.Application) -> None:
    """Hash every listed checkpoint once the model is up, so titles carry hashes as in A1111
    (the loaded one is hashed on demand anyway). Cached: later starts only check the files."""
    while engine(app).status.state.value in ("loading", "downloading"):
        await asyncio.sleep(0.5)
    for checkpoint in await asyncio.to_thread(checkpoints, app):
        try:
            await asyncio.to_thread(digest, app, checkpoint)
        except OSError as exc:
            log.warning("could not hash %s: %s", checkpoint.filename, exc)


# ---------------------------------------------------------------------------------------------
# Routes


def _sd_model_items(app: web.Application) -> list[dict[str, Any]]:
    items = []
    current = loaded_checkpoint(app)
    for entry in checkpoints(app):
        sha = digest(app, entry) if entry == current else cached_digest(app, entry)
        items.append({"title": entry.title(sha), "model_name": entry.model_name, "hash": short(sha), "sha256": sha,
                      "filename": entry.filename, "config": None})
    return items


@a1111_route
async def refresh(request: web.Request) -> web.Response:
    """refresh-checkpoints / -vae / -loras / -embeddings: every listing reads the folders afresh,
    so there is nothing to reload; answers as A1111 does."""
    return json_response(None)


def lora_items(app: web.Application) -> list[dict[str, Any]]:
    """The LoRAs a prompt may name (the files directly in the LoRA folders, as the engine finds them)."""
    cfg = settings(app)
    items, seen = [], set()
    for path in weight_files(cfg.lora_dirs, cfg.allow_pickle, recursive=False):
        if path.stem not in seen:
            seen.add(path.stem)
            metadata = safetensors_metadata(path) if path.suffix.lower() in SAFE_WEIGHTS else {}
            alias = metadata.get("ss_output_name") if isinstance(metadata.get("ss_output_name"), str) else path.stem
            items.append({"name": path.stem, "alias": alias, "path": str(path), "metadata": metadata})
    return items


def _listing(fn):
    """A route answering `fn(app)`, which reads folders (so: off the event loop)."""

    @a1111_route
    async def route(request: web.Request) -> web.Response:
        return json_response(await asyncio.to_thread(fn, request.app))

    return route


sd_models = _listing(_sd_model_items)
sd_vae = _listing(lambda app: engine(app).vaes())
loras = _listing(lora_items)
embeddings = _listing(lambda app: engine(app).embeddings())


@a1111_route
async def hypernetworks(request: web.Request) -> web.Response:
    return json_response([])  # this server has no hypernetworks (prompts naming one are refused)


def _ram() -> dict[str, Any]:
    try:
        import psutil
    except ImportError:
        return {"error": "psutil is not installed"}
    process = psutil.Process(os.getpid())
    used = process.memory_info().rss
    total = psutil.virtual_memory().total
    return {"free": total - used, "used": used, "total": total}


@a1111_route
async def memory(request: web.Request) -> web.Response:
    """A1111's /memory: this process's RAM use, and the accelerator's (or its error)."""
    ram = await asyncio.to_thread(_ram)
    return json_response({"ram": ram, "cuda": await asyncio.to_thread(engine(request.app).memory)})


__all__ = ["Checkpoint", "checkpoints", "find_checkpoint", "switch_model", "digest", "UnknownModel"]
