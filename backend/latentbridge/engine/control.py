"""ControlNet: weights by name in a bounded cache, and what a request's units add to a pipeline call.

A unit names its ControlNet (or gets the server's default for its control type and the loaded
family). Sources are those of models: the built-in tiny ControlNets, a name inside
`--controlnet-dirs`, and for local callers a hub id, a diffusers folder or a single .safetensors
file (its config folder beside it). Loaded ControlNets stay in a small LRU cache (`--controlnet-
cache`); the pipelines that use them come from the loaded model with `from_pipe`, so they share
its UNet/transformer, VAE and text encoders (models.LoadedModel.pipe).

Control modes (A1111's "Balanced", "My prompt is more important", "ControlNet is more
important") are applied to the ControlNet's outputs by a forward hook: `prompt` scales the
residual of layer i of n by 0.825^(n-1-i) (the deepest layers keep theirs), `control` does that
and also drops the residuals from the unconditional half of a classifier-free-guidance batch, so
guidance amplifies the control. That is sd-webui-controlnet's soft/CFG injection.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .. import model_dirs
from ..protocol import (
    ControlType,
    ControlUnit,
    ErrorCode,
    LatentBridgeError,
    Mode,
    UnknownModel,
    Unsupported,
)
from ..settings import Settings
from . import download, tiny_control
from .models import LoadedModel, _first_line, _hub_offline, _looks_like_hub_id, check_component_weights, check_weights_file

log = logging.getLogger(__name__)

SOFT_INJECTION = 0.825
# ControlNet Union's control modes (xinsir/controlnet-union-sdxl-1.0's order).
UNION_MODES = {
    ControlType.openpose: 0,
    ControlType.depth: 1,
    ControlType.softedge: 2,
    ControlType.scribble: 2,
    ControlType.canny: 3,
    ControlType.lineart: 3,
    ControlType.normal: 4,
    ControlType.segmentation: 5,
    ControlType.tile: 6,
}
# Which modes each family can run with ControlNet: diffusers' pipelines (SD3 has a text-to-image
# ControlNet pipeline only; its inpainting one needs a dedicated inpainting ControlNet).
CONTROL_MODES = {
    "sd1": set(Mode), "sd2": set(Mode), "sdxl": set(Mode), "flux": set(Mode), "sd3": {Mode.txt2img},
}
UNET_FAMILIES = ("sd1", "sd2", "sdxl")

_HINT = ("name a built-in ControlNet (tiny-controlnet, ...), one inside --controlnet-dirs, or (on the server's own "
         "machine) a hub id, a diffusers folder or a .safetensors file")


@dataclass(frozen=True)
class ControlNetSource:
    kind: str  # "builtin" | "folder" | "single_file" | "hub"
    ref: str


@dataclass
class LoadedControlNet:
    name: str
    source: ControlNetSource
    family: str
    net: torch.nn.Module

    @property
    def union(self) -> bool:
        return type(self.net).__name__ == "ControlNetUnionModel"


# --------------------------------------------------------------------------------------------
# Names and sources


def default_models(settings: Settings) -> dict[str, str]:
    """`--controlnet-models depth=NAME,canny=NAME` → {"depth": NAME, ...}."""
    defaults = {}
    for item in settings.controlnet_models:
        kind, sep, name = item.partition("=")
        if sep and kind.strip() and name.strip():
            defaults[kind.strip()] = name.strip()
    return defaults


def unit_model_name(unit: ControlUnit, model: LoadedModel, settings: Settings, field: str) -> str:
    """The ControlNet a unit uses: its own, the configured default for its type, or, when the
    loaded model is a built-in random one, the built-in random ControlNet of its family."""
    if unit.model:
        return unit.model
    configured = default_models(settings).get(unit.type.value)
    if configured:
        return configured
    builtin = tiny_control.default_for(model.source.ref) if model.source.kind == "builtin" else None
    if builtin is not None:
        return builtin
    raise LatentBridgeError(f"no ControlNet for {unit.type.value} control: name one in `{field}`, or start the server "
                            f"with --controlnet-models {unit.type.value}=NAME", field=field, code=ErrorCode.invalid_request)


def resolve_source(name: str, settings: Settings, *, local: bool, field: str) -> ControlNetSource:
    name = name.strip()
    if tiny_control.is_builtin(name):
        return ControlNetSource("builtin", name)
    configured = set(default_models(settings).values())
    if not local and name not in configured:
        path = model_dirs.find(name, settings, dirs=settings.controlnet_dirs, field=field, what="ControlNet",
                               flag="--controlnet-dirs")
        return _source_for_path(path, field)
    found = model_dirs.local_path(name, settings.controlnet_dirs)
    if found is not None:
        return _source_for_path(found, field)
    if _looks_like_hub_id(name):
        return ControlNetSource("hub", name)
    raise UnknownModel(f"unknown ControlNet {name!r}: {_HINT}", field=field)


def _source_for_path(path: Path, field: str) -> ControlNetSource:
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModel(f"{path.name} is a folder without config.json (not a diffusers ControlNet): {_HINT}",
                               field=field)
        return ControlNetSource("folder", str(path))
    return ControlNetSource("single_file", str(path))


def family_of(net: torch.nn.Module) -> str:
    name = type(net).__name__
    if name.startswith("SD3"):
        return "sd3"
    if name.startswith("Flux"):
        return "flux"
    config = net.config
    if getattr(config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return "sd2" if getattr(config, "cross_attention_dim", 768) == 1024 else "sd1"


def check_fits(control: LoadedControlNet, model: LoadedModel, field: str) -> None:
    """Refuse a ControlNet made for another family or another size of model, before it runs."""
    net, denoiser = control.net.config, model.denoiser().config
    fits = control.family == model.family or {control.family, model.family} <= {"sd1", "sd2"}
    if fits and model.family in UNET_FAMILIES:
        fits = net.cross_attention_dim == denoiser.cross_attention_dim and \
            tuple(net.block_out_channels) == tuple(denoiser.block_out_channels)
    elif fits:
        fits = net.num_attention_heads * net.attention_head_dim == denoiser.num_attention_heads * denoiser.attention_head_dim
    if not fits:
        raise Unsupported(f"ControlNet {control.name!r} is made for {control.family} models of another shape; the loaded "
                          f"model {model.name!r} is {model.family}: pick a ControlNet for this model", field=field)


# --------------------------------------------------------------------------------------------
# Loading, with a bounded cache


class ControlNetCache:
    def __init__(self, settings: Settings, *, local: bool):
        self.settings = settings
        self.local = local
        self._loaded: collections.OrderedDict[tuple, LoadedControlNet] = collections.OrderedDict()

    def get(self, name: str, model: LoadedModel, field: str) -> LoadedControlNet:
        source = resolve_source(name, self.settings, local=self.local, field=field)
        key = (source, str(model.device), str(model.dtype))
        if key in self._loaded:
            self._loaded.move_to_end(key)
            control = self._loaded[key]
        else:
            net = self._load(source, model.dtype, field)
            net.to(model.device)
            control = LoadedControlNet(name=name, source=source, family=family_of(net), net=net)
            self._loaded[key] = control
            while len(self._loaded) > self.settings.controlnet_cache:
                dropped = self._loaded.popitem(last=False)[1]
                log.info("ControlNet %s dropped from the cache", dropped.name)
            log.info("ControlNet %s loaded (%s)", name, control.family)
        check_fits(control, model, field)
        return control

    def names(self) -> list[str]:
        return [c.name for c in self._loaded.values()]

    def _load(self, source: ControlNetSource, dtype: torch.dtype, field: str) -> torch.nn.Module:
        from diffusers import AutoModel, ControlNetModel

        try:
            if source.kind == "builtin":
                net = tiny_control.build_controlnet(source.ref)
                return net if dtype == torch.float32 else net.to(dtype=dtype)
            if source.kind == "single_file":
                path = Path(source.ref)
                check_weights_file(path, self.settings.allow_pickle, what="ControlNet")
                config = path.with_suffix("")
                kwargs = {"config": str(config)} if (config / "config.json").is_file() else {}
                return ControlNetModel.from_single_file(str(path), local_files_only=True, dtype=dtype, **kwargs)
            if source.kind == "folder":
                check_component_weights(Path(source.ref), Path(source.ref).name, self.settings.allow_pickle, field)
                return AutoModel.from_pretrained(source.ref, dtype=dtype, use_safetensors=not self.settings.allow_pickle)
            return AutoModel.from_pretrained(source.ref, dtype=dtype, use_safetensors=not self.settings.allow_pickle,
                                             local_files_only=_hub_offline(self.settings))
        except LatentBridgeError as exc:
            exc.field = field
            raise
        except (OSError, ValueError, EnvironmentError) as exc:
            if source.kind == "hub":
                reason = ("it is not in the local cache and downloads are off" if _hub_offline(self.settings)
                          else download.failure_reason(source.ref, exc))
                raise UnknownModel(f"could not get ControlNet {source.ref!r}: {reason}. Instead, {_HINT}",
                                   field=field) from None
            raise LatentBridgeError(f"could not load ControlNet {Path(source.ref).name}: {_first_line(exc)}",
                                    field=field, code=ErrorCode.model_load_failed) from None


# --------------------------------------------------------------------------------------------
# One request's units in a pipeline call


@dataclass
class ControlRun:
    """A request's control units, resolved: what they add to each denoising call."""

    units: list[ControlUnit]
    controls: list[LoadedControlNet]
    images: list[Image.Image]  # RGB maps, one per unit
    family: str

    def __post_init__(self) -> None:
        # One module object per unit, so each can carry its own control-mode hook; a ControlNet two
        # units share is aliased (same weights, see _alias).
        seen: set[int] = set()
        self.nets = []
        for control in self.controls:
            self.nets.append(_alias(control.net) if id(control.net) in seen else control.net)
            seen.add(id(control.net))

    @property
    def union(self) -> bool:
        return self.controls[0].union

    def controlnet(self):
        """The `controlnet=` argument of `from_pipe`: one model, or a list (diffusers wraps it)."""
        return self.nets[0] if len(self.nets) == 1 else list(self.nets)

    def modules(self) -> list[torch.nn.Module]:
        """The distinct ControlNets (for seamless patching)."""
        return list({id(c.net): c.net for c in self.controls}.values())

    def cropped(self, box: tuple[int, int, int, int], full_size: tuple[int, int]) -> "ControlRun":
        """The maps of an "only masked" inpaint: cropped like the init image (after fitting them to it)."""
        images = [_fit(image, full_size, unit).crop(box) for image, unit in zip(self.images, self.units)]
        return ControlRun(self.units, self.controls, images, self.family)

    def pipeline_kwargs(self, kind: str, width: int, height: int) -> dict:
        images = [_fit(image, (width, height), unit) for image, unit in zip(self.images, self.units)]
        single = len(images) == 1
        kwargs: dict = {
            "controlnet_conditioning_scale": self.units[0].weight if single else [u.weight for u in self.units],
            "control_guidance_start": [u.start for u in self.units],
            "control_guidance_end": [u.end for u in self.units],
        }
        if self.union:
            kwargs["control_image"] = images
            kwargs["control_mode"] = [UNION_MODES[u.type] for u in self.units]
        elif kind == "text2image" and self.family in UNET_FAMILIES:
            kwargs["image"] = images[0] if single else images  # SD text-to-image calls its control image `image`
        else:
            kwargs["control_image"] = images[0] if single else images
            if self.family == "flux" and not single:
                # Flux's multi-ControlNet img2img/inpaint pipelines need a mode per unit (None = no union).
                kwargs["control_mode"] = [None] * len(images)
        return kwargs

    @contextlib.contextmanager
    def hooks(self, images_per_call: int):
        """Apply the units' control modes to the ControlNets' outputs (see the module docstring)."""
        handles = [net.register_forward_hook(_mode_hook(unit.mode, images_per_call), with_kwargs=True)
                   for net, unit in zip(self.nets, self.units) if unit.mode != "balanced"]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs")


def _alias(net: torch.nn.Module) -> torch.nn.Module:
    """Another module object over the very same weights and sub-modules (a shallow copy) with hook
    tables of its own: two units that use one ControlNet then run it with different hooks, and
    no weight is copied."""
    alias = copy.copy(net)
    for name in _HOOK_DICTS:
        setattr(alias, name, collections.OrderedDict())
    return alias


def _mode_hook(mode: str, images_per_call: int):
    """A forward hook scaling a ControlNet's residuals for control mode `prompt` or `control`."""

    def hook(module, args, kwargs, output):
        down, mid = output
        n = len(down) + 1
        scales = [SOFT_INJECTION ** (n - 1 - i) for i in range(n)]
        down = [d * s for d, s in zip(down, scales)]
        if mode == "control":
            sample = kwargs.get("sample", args[0] if args else None)
            if sample is not None and sample.shape[0] == 2 * images_per_call:
                # Classifier-free guidance: [unconditional, conditional]. Control only the latter.
                keep = torch.ones(sample.shape[0], 1, 1, 1, dtype=mid.dtype, device=mid.device)
                keep[:images_per_call] = 0
                down = [d * keep for d in down]
                mid = mid * keep
        return tuple(down), mid

    return hook


def _fit(image: Image.Image, size: tuple[int, int], unit: ControlUnit) -> Image.Image:
    """A map at the working size. Segmentation maps keep their exact colours (nearest neighbour)."""
    image = image.convert("RGB")
    if image.size == size:
        return image
    resample = Image.Resampling.NEAREST if unit.type is ControlType.segmentation else Image.Resampling.LANCZOS
    return image.resize(size, resample)


def check_units(units: list[ControlUnit], family: str, mode: Mode) -> None:
    """What the family's ControlNet pipelines cannot do, as typed errors naming the field."""
    if mode not in CONTROL_MODES.get(family, set()):
        raise Unsupported(f"ControlNet with mode {mode.value} is not available for {family} models in diffusers "
                          f"(text-to-image only)", field="controls")
    for i, unit in enumerate(units):
        if unit.mode != "balanced" and family not in UNET_FAMILIES:
            raise Unsupported(f"control mode {unit.mode!r} needs a UNet ControlNet (SD 1.x/2.x, SDXL); {family} "
                              "ControlNets take `balanced` only", field=f"controls.{i}.mode")


def resolve(cache: ControlNetCache, units: list[ControlUnit], images: list[Image.Image], model: LoadedModel,
            mode: Mode) -> ControlRun | None:
    """The units that take part (weight > 0), with their ControlNets; None when none does. A
    unit of weight 0 is left out: it would add exactly nothing, and some pipelines (Flux) draw
    noise to encode each control image, which would change the picture all the same."""
    check_units(units, model.family, mode)
    active = [(i, unit, image) for i, (unit, image) in enumerate(zip(units, images)) if unit.weight > 0]
    if not active:
        return None
    controls = []
    for i, unit, _image in active:
        field = f"controls.{i}.model"
        controls.append(cache.get(unit_model_name(unit, model, cache.settings, field), model, field))
    if len({c.union for c in controls}) > 1:
        raise Unsupported("ControlNet Union and single-type ControlNets cannot be mixed in one request", field="controls")
    if controls[0].union:
        for i, unit, _image in active:
            if unit.type not in UNION_MODES:
                raise Unsupported(f"ControlNet Union has no {unit.type.value} mode", field=f"controls.{i}.type")
    return ControlRun([unit for _, unit, _ in active], controls, [image for _, _, image in active], model.family)
