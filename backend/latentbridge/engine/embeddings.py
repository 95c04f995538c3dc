"""Textual-inversion embeddings from `--embedding-dirs`, used in prompts by name as in A1111.

An embedding is a few learned token vectors; a prompt that names one (its file name without the
extension, as a whole word) gets those vectors in its place. For each request the embeddings its
prompts name are added to the tokenizer and text encoder (diffusers' `load_textual_inversion`)
and removed again afterwards, so the model is untouched between requests and an embedding that
does not fit the loaded model (its vectors have another width) is never half-applied.

File formats: A1111's (`string_to_param` in a .pt; `emb_params` in a .safetensors), diffusers'
(`{token: tensor}`), and SDXL's pair (`clip_l` + `clip_g`). .safetensors files always; pickle
files (.pt/.bin) only with --allow-pickle.
"""

from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..model_dirs import SAFE_WEIGHTS, weight_files
from ..protocol import ErrorCode, LatentBridgeError
from ..settings import Settings

log = logging.getLogger(__name__)

# The text-encoder slots a model has: (pipeline attribute of the tokenizer, of the encoder, key in an SDXL file).
_SLOTS = {"": ("tokenizer", "text_encoder"), "clip_l": ("tokenizer", "text_encoder"), "clip_g": ("tokenizer_2", "text_encoder_2")}


@dataclass
class Embedding:
    name: str
    path: Path
    vectors: dict[str, torch.Tensor]  # "" for one text encoder, "clip_l" + "clip_g" for SDXL
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def width(self) -> int:
        """A1111's `shape`: the vector width (both encoders' summed for an SDXL pair)."""
        return sum(int(v.shape[-1]) for v in self.vectors.values())


@dataclass
class _Cache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: dict[tuple[str, float], Embedding] = field(default_factory=dict)


_cache = _Cache()


def embedding_files(settings: Settings) -> dict[str, Path]:
    """name → file for every embedding in the folders (recursively; the first of a name wins)."""
    found: dict[str, Path] = {}
    for path in weight_files(settings.embedding_dirs, settings.allow_pickle):
        found.setdefault(path.stem, path)
    return found


def read_embedding(name: str, path: Path, allow_pickle: bool) -> Embedding:
    """Parse one embedding file (cached by path and modification time)."""
    key = (str(path), path.stat().st_mtime)
    with _cache.lock:
        if key in _cache.entries:
            return _cache.entries[key]
    embedding = _parse(name, path, _load_file(path, allow_pickle))
    with _cache.lock:
        _cache.entries[key] = embedding
    return embedding


def _load_file(path: Path, allow_pickle: bool) -> dict:
    suffix = path.suffix.lower()
    try:
        if suffix in SAFE_WEIGHTS:
            from safetensors.torch import load_file

            return load_file(str(path))
        if not allow_pickle:
            raise LatentBridgeError(f"embedding {path.name} is a pickle file, which can run code when loaded: convert "
                                    "it to .safetensors, or start with --allow-pickle", field="prompt",
                                    code=ErrorCode.unsupported)
        data = torch.load(str(path), map_location="cpu", weights_only=True)
        return data if isinstance(data, dict) else {"": data}
    except LatentBridgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken file is the client's typed error, not a crash
        raise LatentBridgeError(f"embedding {path.name} could not be read ({type(exc).__name__})", field="prompt",
                                code=ErrorCode.invalid_request) from None


def _parse(name: str, path: Path, data: dict) -> Embedding:
    meta = {k: data.get(k) for k in ("step", "sd_checkpoint", "sd_checkpoint_name")}
    if isinstance(data.get("clip_l"), torch.Tensor) and isinstance(data.get("clip_g"), torch.Tensor):
        vectors = {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
    elif isinstance(data.get("string_to_param"), dict):  # A1111 .pt
        vectors = {"": next(iter(data["string_to_param"].values()))}
    elif isinstance(data.get("emb_params"), torch.Tensor):  # A1111 .safetensors
        vectors = {"": data["emb_params"]}
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise LatentBridgeError(f"{path.name} is not a textual-inversion embedding (expected one tensor, emb_params, "
                                    "string_to_param or clip_l + clip_g)", field="prompt", code=ErrorCode.invalid_request)
        vectors = {"": tensors[0]}
    vectors = {k: (v[None] if v.ndim == 1 else v).detach().float().cpu() for k, v in vectors.items()}
    step = meta["step"]
    return Embedding(name, path, vectors, step=int(step) if isinstance(step, (int, float)) else None,
                     sd_checkpoint=meta["sd_checkpoint"] if isinstance(meta["sd_checkpoint"], str) else None,
                     sd_checkpoint_name=meta["sd_checkpoint_name"] if isinstance(meta["sd_checkpoint_name"], str) else None)


def expected_widths(pipe) -> dict[str, int]:
    """The vector widths the pipeline's text encoders take, by slot ({} when they take no embeddings)."""
    if not hasattr(pipe, "load_textual_inversion"):
        return {}  # SD3 / Flux pipelines have no textual-inversion loader
    if getattr(pipe, "text_encoder_2", None) is not None:
        return {slot: _width(getattr(pipe, _SLOTS[slot][1])) for slot in ("clip_l", "clip_g")}
    encoder = getattr(pipe, "text_encoder", None)
    return {"": _width(encoder)} if encoder is not None else {}


def _width(encoder) -> int:
    return int(encoder.get_input_embeddings().weight.shape[-1])


def fits(embedding: Embedding, widths: dict[str, int]) -> bool:
    if set(embedding.vectors) == {""}:
        return list(widths) == [""] and embedding.width == widths[""]
    return set(embedding.vectors) == set(widths) and all(int(embedding.vectors[k].shape[-1]) == widths[k] for k in widths)


def listing(settings: Settings, pipe) -> dict[str, dict[str, dict]]:
    """A1111's `/embeddings` answer: the ones that fit the loaded model and the ones that do not."""
    widths = expected_widths(pipe) if pipe is not None else {}
    out: dict[str, dict[str, dict]] = {"loaded": {}, "skipped": {}}
    for name, path in embedding_files(settings).items():
        try:
            embedding = read_embedding(name, path, settings.allow_pickle)
        except LatentBridgeError as exc:
            log.warning("skipping embedding %s: %s", path.name, exc.message)
            continue
        group = "loaded" if widths and fits(embedding, widths) else "skipped"
        out[group][name] = {"step": embedding.step, "sd_checkpoint": embedding.sd_checkpoint,
                            "sd_checkpoint_name": embedding.sd_checkpoint_name, "shape": embedding.width,
                            "vectors": embedding.count}
    return out


def named_in(prompts: list[str], names: list[str]) -> list[str]:
    """The embedding names that appear in the prompts as whole words."""
    text = "\n".join(prompts)
    return [n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]


@contextmanager
def applied_embeddings(pipe, prompts: list[str], settings: Settings):
    """The embeddings the prompts name, added to the pipeline's tokenizers and text encoders for
    the duration of the block (every mode's pipeline shares those objects)."""
    files = embedding_files(settings) if settings.embedding_dirs else {}
    wanted = named_in(prompts, list(files)) if files else []
    widths = expected_widths(pipe) if wanted else {}
    loaded: list[tuple[str, list[str]]] = []  # (slot, tokens) to remove afterwards
    try:
        for name in wanted:
            embedding = read_embedding(name, files[name], settings.allow_pickle)
            if not fits(embedding, widths):
                raise LatentBridgeError(
                    f"embedding {name!r} ({embedding.width}-wide vectors) does not fit this model's text encoder"
                    f"{'s' if len(widths) > 1 else ''} ({'+'.join(str(w) for w in widths.values()) or 'none'})",
                    field="prompt", code=ErrorCode.invalid_request)
            for slot, vectors in embedding.vectors.items():
                tokenizer_attr, encoder_attr = _SLOTS[slot]
                tokenizer, encoder = getattr(pipe, tokenizer_attr), getattr(pipe, encoder_attr)
                tokens = [name] + [f"{name}_{i}" for i in range(1, vectors.shape[0])]
                loaded.append((slot, tokens))  # before loading: a half-done load is undone too
                pipe.load_textual_inversion(vectors.to(encoder.dtype), token=name, tokenizer=tokenizer,
                                            text_encoder=encoder)
        yield wanted
    finally:
        for slot, tokens in reversed(loaded):
            tokenizer_attr, encoder_attr = _SLOTS[slot]
            tokenizer = getattr(pipe, tokenizer_attr)
            present = [t for t in tokens if t in tokenizer.get_vocab()]
            if present:
                pipe.unload_textual_inversion(tokens=present, tokenizer=tokenizer,
                                              text_encoder=getattr(pipe, encoder_attr))
