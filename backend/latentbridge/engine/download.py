"""Fetching a hub model into the Hugging Face cache, with progress.

A first run of a real model downloads gigabytes; the server reports `downloading` with a 0..1
progress meanwhile instead of a silent `loading`. diffusers' own `DiffusionPipeline.download`
chooses the files (safetensors, no variants); progress is the bytes in the repo's cache folder
(partial files included) over the size of the files it will fetch, from the hub's file list.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Callable

# Only these top-level files are fetched; everything else lives in component folders.
_TOP_LEVEL = {"model_index.json", "scheduler_config.json", "config.json"}
_NEVER = (".msgpack", ".onnx", ".onnx_data", ".pb", ".h5")  # other frameworks' weights
_PICKLE = (".bin", ".ckpt", ".pt", ".pth")
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")

ProgressCallback = Callable[[float | None], None]
POLL_S = 0.5  # how often progress is measured while downloading


def cache_folder(repo_id: str) -> Path:
    """The repo's folder in the Hugging Face cache (where its blobs land while downloading)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (links not followed, so blobs are counted once)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:  # a partial file renamed while we looked
            continue
    return total


def _is_variant(filename: str) -> bool:
    """`x.fp16.safetensors` / `x.fp16-00001-of-00002.safetensors` are variants; `x.safetensors` is not."""
    stem = _SHARD.sub("", Path(filename).name.removesuffix(".safetensors"))
    return "." in stem


def fetched_files(sizes: dict[str, int], allow_pickle: bool) -> dict[str, int]:
    """The files of a diffusers repo (path → bytes) that a default download fetches: the top-level
    configs and, per component folder, its configs and non-variant weights (pickle weights only
    when the folder has no safetensors and the user allowed pickle)."""
    folders_with_safetensors = {name.split("/")[0] for name in sizes if name.endswith(".safetensors") and "/" in name}
    chosen = {}
    for name, size in sizes.items():
        if "/" not in name:
            if name in _TOP_LEVEL:
                chosen[name] = size
            continue
        folder = name.split("/")[0]
        if name.endswith(_NEVER):
            continue
        if name.endswith(_PICKLE) and (folder in folders_with_safetensors or not allow_pickle):
            continue
        if name.endswith(".safetensors") and _is_variant(name):
            continue
        chosen[name] = size
    return chosen


def expected_bytes(repo_id: str, allow_pickle: bool) -> int | None:
    """Total size of what `fetch` will download, from the hub's file list; None when unknown."""
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo_id, files_metadata=True)
    except Exception:  # no network, private repo, old hub: progress is then just unknown
        return None
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    return sum(fetched_files(sizes, allow_pickle).values()) or None


def fetch(repo_id: str, allow_pickle: bool, on_progress: ProgressCallback) -> str:
    """Download (or check) `repo_id` into the cache and return its local snapshot folder,
    calling `on_progress(fraction or None)` every POLL_S seconds while it works."""
    from diffusers import DiffusionPipeline

    total = expected_bytes(repo_id, allow_pickle)
    folder = cache_folder(repo_id)
    finished = threading.Event()

    def report() -> None:  # 0.99 at most: 1.0 ("fetched") is for the loader to say once download() returns
        on_progress(min(0.99, folder_bytes(folder) / total) if total else None)

    def watch() -> None:
        while not finished.wait(POLL_S):
            report()

    report()
    watcher = threading.Thread(target=watch, name="latentbridge-download", daemon=True)
    watcher.start()
    try:
        return str(DiffusionPipeline.download(repo_id, use_safetensors=None if allow_pickle else True))
    finally:
        finished.set()
        watcher.join()


def failure_reason(repo_id: str, exc: BaseException) -> str:
    """Why getting `repo_id` from the hub failed, in full and in the user's terms: huggingface_hub
    and diffusers wrap the cause (a connection error may surface as "outgoing traffic has been
    disabled" although nobody disabled anything), so the chain of causes is what tells."""
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    names = {type(e).__name__ for e in chain}
    if "GatedRepoError" in names:
        return (f"'{repo_id}' is a gated model: accept its licence on https://huggingface.co/{repo_id} and log in "
                "with `hf auth login`")
    if "RepositoryNotFoundError" in names:
        return (f"the hub has no model '{repo_id}' that you may read (check the spelling; a private model needs "
                "`hf auth login`)")
    if "RevisionNotFoundError" in names or "EntryNotFoundError" in names:
        return f"'{repo_id}' on the hub lacks files a diffusers model needs (is it a diffusers repo?)"
    if any(isinstance(e, (socket.gaierror, ConnectionError, TimeoutError)) or "Connect" in type(e).__name__
           or "Timeout" in type(e).__name__ for e in chain):
        return "the Hugging Face hub could not be reached (no network connection, or a proxy or firewall in the way)"
    return " ".join(str(exc).split()) or type(exc).__name__
