"""Estimators for the preprocessors that need a model: found, loaded and cached like models.

Two kinds (`DEPTH`, `SEGMENTATION`), each named by a server setting:

- depth (`--depth-estimator`, for the `depth` and `normal` preprocessors): a transformers
  depth-estimation model (`AutoModelForDepthEstimation`) with its image processor: Depth Anything
  (V1/V2), DPT/MiDaS, ZoeDepth, GLPN, Depth Pro...
- segmentation (`--segmentation-estimator`, for the `segmentation` preprocessor): a transformers
  semantic-segmentation model (`AutoModelForSemanticSegmentation`): UperNet, SegFormer, BEiT,
  DPT... trained on ADE20K, whose 150 classes the segmentation ControlNets were trained on.

Sources, as for models:

- `tiny-depth` / `tiny-segmentation`: built in code with random weights (engine/tiny_estimators.py), for tests.
- a local folder as `save_pretrained` writes it (config.json, preprocessor_config.json, weights).
- a hub id (`owner/name`): fetched once into the Hugging Face cache, then loaded from there like a
  folder; with --offline (or HF_HUB_OFFLINE=1) only the cache is used.

Weights are safetensors only unless the user allowed pickle (`allow_pickle`), checked before
loading with the model loader's own checks. Device and dtype are the engine's (`pick_device`,
`pick_dtype`). `EstimatorCache` loads each estimator once and keeps a few (bounded).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..model_dirs import PICKLE_WEIGHTS, SAFE_WEIGHTS
from ..protocol import BadImage, ErrorCode, LatentBridgeError, OutOfMemory, UnknownModel, Unsupported
from ..settings import Settings
from . import download, tiny_estimators
from .models import _first_line, _hub_offline, _looks_like_hub_id, check_safetensors, check_weights_file, pick_device, pick_dtype

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class EstimatorKind:
    """What one kind of estimator is: the setting naming it, what transformers loads it with."""

    what: str  # "depth estimator" / "segmentation estimator", in messages
    setting: str  # the settings field (and, with dashes, the serve flag)
    auto_model: str  # the transformers auto class
    post_processing: str  # the image processor's method the preprocessor needs
    builtin: str  # the random built-in one, for tests
    example: str  # a hub id to suggest

    @property
    def hint(self) -> str:
        return (f"pass --{self.setting.replace('_', '-')} with a local transformers folder (config.json, "
                f"preprocessor_config.json and model.safetensors), a hub id such as '{self.example}' "
                f"(downloaded once, needs the network), or '{self.builtin}' for the built-in test estimator")


DEPTH = EstimatorKind("depth estimator", "depth_estimator", "AutoModelForDepthEstimation",
                      "post_process_depth_estimation", "tiny-depth", "depth-anything/Depth-Anything-V2-Small-hf")
SEGMENTATION = EstimatorKind("segmentation estimator", "segmentation_estimator", "AutoModelForSemanticSegmentation",
                             "post_process_semantic_segmentation", "tiny-segmentation",
                             "openmmlab/upernet-convnext-small")
SETTING = DEPTH.setting  # the depth estimator's settings field, the default `field` of errors
# transformers depth models whose output is depth (larger = farther), not disparity. Depth
# Anything says which in its config (`depth_estimation_type`); DPT/MiDaS output disparity.
_METRIC_MODEL_TYPES = {"zoedepth", "glpn", "depth_pro"}
# Files a hub fetch takes: configs and weights (pickle weights only when the user allowed them).
_HUB_FILES = ["*.json", "*.txt", "*.safetensors"]


@dataclass(frozen=True)
class EstimatorSource:
    kind: str  # "builtin" | "folder" | "hub"
    ref: str  # built-in name, folder path, or hub id


def resolve_estimator(name: str, *, field: str = SETTING, kind: EstimatorKind = DEPTH) -> EstimatorSource:
    """Where the estimator called `name` comes from. The name is the server's own setting (never a
    remote client's), so any local path is accepted, as `--model` accepts one from the CLI."""
    name = name.strip()
    if not name:
        raise UnknownModel(f"empty {kind.what} name: {kind.hint}", field=field)
    if tiny_estimators.is_builtin(name):
        if name != kind.builtin:
            raise UnknownModel(f"{name!r} is not a {kind.what}: {kind.hint}", field=field)
        return EstimatorSource("builtin", name)
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModel(f"{kind.what} folder {path} has no config.json (not a transformers model): {kind.hint}",
                               field=field)
        return EstimatorSource("folder", str(path))
    if path.exists():
        raise UnknownModel(f"{kind.what} {name!r} is a file; estimators load from a folder: {kind.hint}", field=field)
    if name.startswith((".", "/", "~")) or not _looks_like_hub_id(name):
        raise UnknownModel(f"unknown {kind.what} {name!r} (no such folder): {kind.hint}", field=field)
    return EstimatorSource("hub", name)


def check_estimator_weights(folder: Path, allow_pickle: bool, *, field: str = SETTING, kind: EstimatorKind = DEPTH) -> None:
    """Refuse a folder whose only weights are pickle files (they can run code when loaded) unless
    the user opted in, and corrupt .safetensors files; with the model loader's own checks."""
    files = [f for f in folder.iterdir() if f.is_file()]
    safe = [f for f in files if f.suffix.lower() in SAFE_WEIGHTS]
    pickled = [f for f in files if f.suffix.lower() in PICKLE_WEIGHTS]
    if not safe and not pickled:
        raise UnknownModel(f"{kind.what} folder {folder} has no .safetensors weights (a hub fetch takes pickle "
                           f"weights only with --allow-pickle): {kind.hint}", field=field)
    try:
        for weights in safe:
            check_safetensors(weights, field=field, label=f"{folder.name}/{weights.name}")
        if not safe:
            check_weights_file(pickled[0], allow_pickle, what=kind.what)
    except LatentBridgeError as exc:  # their messages say what to do; the field and code are ours
        exc.field = field
        if exc.code == ErrorCode.invalid_request:  # a corrupt file: the estimator failed to load
            exc.code = ErrorCode.model_load_failed
        raise


@dataclass
class LoadedEstimator:
    """A loaded estimator, placed on its device."""

    name: str
    model: object  # a transformers *ForDepthEstimation / *ForSemanticSegmentation model, in eval mode
    processor: object  # its image processor
    device: object  # torch.device
    dtype: object  # torch.dtype

    what = "estimator"

    def _forward(self, image: Image.Image, field: str):
        """The model's outputs on `image`, through its processor; typed errors for an image the
        processor cannot take and for running out of accelerator memory."""
        width, height = image.size
        try:
            inputs = self.processor(images=image, return_tensors="pt")
        except ValueError as exc:  # e.g. a side resized to 0 px: an image far longer than wide
            raise BadImage(f"{field}: a {width}x{height} image is too long and thin for {self.what} {self.name} "
                           f"(its processor: {_first_line(exc)[:120]}); pad or crop it nearer to square", field=field) from None
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        try:
            with torch.inference_mode():
                return self.model(pixel_values=pixel_values)
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemory(f"out of memory running {self.what} {self.name} on a {width}x{height} image") from None


class DepthEstimator(LoadedEstimator):
    what = DEPTH.what

    @property
    def outputs_disparity(self) -> bool:
        """Whether the model's output grows towards the camera (relative models: inverse depth)."""
        config = self.model.config
        kind = getattr(config, "depth_estimation_type", None)
        if kind is not None:
            return kind == "relative"
        return config.model_type not in _METRIC_MODEL_TYPES

    def disparity(self, image: Image.Image, *, field: str = SETTING) -> np.ndarray:
        """float32 (H, W) at the image's size, larger = nearer: the model's relative disparity, or
        1 / depth for metric models (ControlNet depth maps are disparity, as MiDaS outputs)."""
        width, height = image.size
        outputs = self._forward(image, field)
        outputs.predicted_depth = outputs.predicted_depth.float()
        post = self.processor.post_process_depth_estimation
        kwargs = {"target_sizes": [(height, width)]}
        if "source_sizes" in inspect.signature(post).parameters:  # ZoeDepth removes its padding
            kwargs["source_sizes"] = [(height, width)]
        with torch.inference_mode():
            depth = post(outputs, **kwargs)[0]["predicted_depth"].float().cpu().numpy().reshape(height, width)
        if not np.isfinite(depth).all():
            raise LatentBridgeError(f"depth estimator {self.name} returned non-finite values (in {self.dtype}); "
                                    "try --dtype float32", field=field, code=ErrorCode.internal)
        if self.outputs_disparity:
            return depth.astype(np.float32)
        return (1.0 / np.maximum(depth, 1e-6)).astype(np.float32)


class Segmenter(LoadedEstimator):
    what = SEGMENTATION.what

    def labels(self, image: Image.Image, *, field: str = SEGMENTATION.setting) -> np.ndarray:
        """int32 (H, W) at the image's size: the model's class id per pixel (0..num_labels-1)."""
        width, height = image.size
        outputs = self._forward(image, field)
        outputs.logits = outputs.logits.float()
        with torch.inference_mode():
            labels = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0]
        return labels.cpu().numpy().astype(np.int32).reshape(height, width)


Estimator = DepthEstimator | Segmenter


def load_estimator(source: EstimatorSource, settings: Settings, *, field: str = SETTING,
                   kind: EstimatorKind = DEPTH) -> Estimator:
    """Load and place an estimator; typed errors say what to pass instead."""
    device = pick_device(settings.device)
    dtype = pick_dtype(device, settings.dtype)
    if source.kind == "builtin":
        model, processor = tiny_estimators.build(source.ref)
    else:
        folder = Path(source.ref) if source.kind == "folder" else _fetch(source.ref, settings, field, kind)
        check_estimator_weights(folder, settings.allow_pickle, field=field, kind=kind)
        model, processor = _load_folder(folder, settings, dtype, field, kind)
    model.to(device=device, dtype=dtype)
    model.eval()
    name = source.ref if source.kind != "folder" else Path(source.ref).name
    log.info("%s %s loaded (%s, %s on %s)", kind.what, name, type(model).__name__, str(dtype).removeprefix("torch."),
             device)
    cls = Segmenter if kind is SEGMENTATION else DepthEstimator
    return cls(name=name, model=model, processor=processor, device=device, dtype=dtype)


def _load_folder(folder: Path, settings: Settings, dtype, field: str, kind: EstimatorKind):
    import transformers

    try:
        processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        # allow_pickle permits pickle weights where no safetensors exist; it never prefers them.
        model = getattr(transformers, kind.auto_model).from_pretrained(
            str(folder), dtype=dtype, local_files_only=True, use_safetensors=None if settings.allow_pickle else True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise LatentBridgeError(f"could not load {kind.what} {folder.name}: {_first_line(exc)}. Instead, {kind.hint}",
                                field=field, code=ErrorCode.model_load_failed) from None
    if not hasattr(processor, kind.post_processing):
        raise LatentBridgeError(f"{folder.name} is not a {kind.what.removesuffix(' estimator')} model (its image "
                                f"processor {type(processor).__name__} has no {kind.post_processing}): {kind.hint}",
                                field=field, code=ErrorCode.model_load_failed)
    return model, processor


def _fetch(repo_id: str, settings: Settings, field: str, kind: EstimatorKind) -> Path:
    """The hub repo's local snapshot: downloaded once (configs and weights only), or from the cache."""
    from huggingface_hub import snapshot_download

    patterns = _HUB_FILES + ([f"*{suffix}" for suffix in PICKLE_WEIGHTS] if settings.allow_pickle else [])
    offline = _hub_offline(settings)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline))
    except Exception as exc:  # huggingface_hub raises many types for "not here / not reachable"
        if offline:
            why = "--offline" if settings.offline else "HF_HUB_OFFLINE=1"
            raise UnknownModel(f"{kind.what} {repo_id!r} is not in the local model cache and downloads are off "
                               f"({why} is set): run once with the network, or {kind.hint}", field=field) from None
        raise UnknownModel(f"could not get {kind.what} {repo_id!r} from the Hugging Face hub: "
                           f"{download.failure_reason(repo_id, exc)}. Instead, {kind.hint}", field=field) from None


class EstimatorCache:
    """Estimators by kind and name, each loaded once and kept; at most `capacity` (least recently
    used goes).

    `get()` gives the estimator the settings name for that kind (`depth_estimator`,
    `segmentation_estimator`); with none set, the preprocessors that need it are off and `get`
    raises `unsupported` saying which setting to pass. Thread-safe: one load at a time."""

    def __init__(self, settings: Settings, *, capacity: int = 2):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.settings = settings
        self.capacity = capacity
        self._loaded: OrderedDict[tuple[str, str], Estimator] = OrderedDict()
        self._lock = threading.Lock()

    def configured(self, kind: EstimatorKind = DEPTH) -> bool:
        return bool(getattr(self.settings, kind.setting))

    def get(self, name: str | None = None, *, field: str | None = None, what: str = "this preprocessor",
            kind: EstimatorKind = DEPTH) -> Estimator:
        field = field or kind.setting
        name = (name or getattr(self.settings, kind.setting) or "").strip()
        if not name:
            raise Unsupported(f"{what} needs a {kind.what} and the server has none: {kind.hint}", field=field)
        key = (kind.setting, name)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            estimator = load_estimator(resolve_estimator(name, field=field, kind=kind), self.settings, field=field,
                                       kind=kind)
            self._loaded[key] = estimator
            while len(self._loaded) > self.capacity:
                (evicted_kind, evicted), _ = self._loaded.popitem(last=False)
                log.info("%s %s unloaded (cache holds %d)", evicted_kind.replace("_", " "), evicted, self.capacity)
            return estimator

    def loaded(self) -> list[str]:
        with self._lock:
            return [name for _kind, name in self._loaded]

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
