"""Reference images (IP-Adapter): adapters by name in a bounded cache, applied to one pipeline call.

A request's `reference` names its IP-Adapter (or gets the server's `--ip-adapter`, or, for a
built-in tiny model, the built-in random adapter of its family). Sources are those of models: the
built-in tiny adapters, a name inside `--controlnet-dirs`, and for local callers a path or a hub
file `owner/repo/path/in/repo.safetensors`. An adapter is a weights file in the original
(h94/IP-Adapter) layout with its image encoder, a `CLIPVisionModelWithProjection` folder named
`image_encoder`, beside it; safetensors only unless `--allow-pickle`. Loaded adapters (their state
dict and encoder, on the model's device) stay in a small LRU cache.

Per denoising call, `applied_reference` loads the adapter into the very pipeline that runs
(`load_ip_adapter` with the cached state dict, `set_ip_adapter_scale`), hands the call its
`ip_adapter_image`, and afterwards puts back exactly what was there before: the UNet's own
attention-processor objects, its `encoder_hid_proj`, the pipeline's image encoder and feature
extractor. The next request runs on the untouched model. SD3 and Flux are refused (`unsupported`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .. import model_dirs
from ..model_dirs import IP_ADAPTER_ENCODER as ENCODER_FOLDER
from ..model_dirs import PICKLE_WEIGHTS, SAFE_WEIGHTS
from ..protocol import ErrorCode, GenerationRequest, LatentBridgeError, MissingImage, UnknownModel, Unsupported
from ..settings import Settings
from . import download, tiny_ip_adapter
from .models import LoadedModel, _first_line, _hub_offline, check_component_weights, check_weights_file

log = logging.getLogger(__name__)

FAMILIES = ("sd1", "sd2", "sdxl")  # UNet models: diffusers' IP-Adapter loader for UNets
FIELD = "reference.model"
CACHE_SIZE = 2  # adapters kept loaded (least recently used dropped first)

_HINT = ("name a built-in IP-Adapter (tiny-ip-adapter, tiny-ip-adapter-sdxl), an IP-Adapter .safetensors file inside "
         "--controlnet-dirs with its image encoder folder `image_encoder/` beside it, or (on the server's own "
         "machine) a path or a hub file such as h94/IP-Adapter/models/ip-adapter_sd15.safetensors")


@dataclass(frozen=True)
class AdapterSource:
    kind: str  # "builtin" | "file" | "hub"
    ref: str  # built-in name, file path, or hub file "owner/repo/path/in/repo.safetensors"


@dataclass
class LoadedAdapter:
    name: str
    source: AdapterSource
    state_dict: dict  # {"image_proj": {...}, "ip_adapter": {...}}, original layout, on the device
    encoder: torch.nn.Module  # CLIPVisionModelWithProjection
    processor: object  # CLIPImageProcessor sized for the encoder


# --------------------------------------------------------------------------------------------
# Names and sources


def adapter_name(request: GenerationRequest, model: LoadedModel, settings: Settings) -> str:
    """The IP-Adapter a request uses: its own, the server's default, or the built-in one of a
    built-in model."""
    if request.reference.model:
        return request.reference.model
    if settings.ip_adapter:
        return settings.ip_adapter
    builtin = tiny_ip_adapter.default_for(model.source.ref) if model.source.kind == "builtin" else None
    if builtin is not None:
        return builtin
    raise LatentBridgeError("no IP-Adapter for the reference images: name one in `reference.model`, or start the "
                            "server with --ip-adapter NAME", field=FIELD, code=ErrorCode.invalid_request)


def available(model: LoadedModel | None, settings: Settings) -> bool:
    """Whether the loaded model can take reference images and an IP-Adapter is at hand: a default
    (`--ip-adapter`, or the built-in one of a built-in model) or one in the ControlNet folders."""
    if model is None or model.family not in FAMILIES:
        return False
    if settings.ip_adapter or (model.source.kind == "builtin" and tiny_ip_adapter.default_for(model.source.ref)):
        return True
    return any(e.kind == "ip_adapter" for e in model_dirs.component_entries(settings.controlnet_dirs))


def _hub_file(name: str) -> tuple[str, str] | None:
    """`owner/repo/path/file.safetensors` → (repo id, path in the repo); None for anything else."""
    parts = name.split("/")
    if len(parts) < 3 or name.startswith((".", "/", "~")) or "\\" in name or not all(parts):
        return None
    if Path(parts[-1]).suffix.lower() not in SAFE_WEIGHTS + PICKLE_WEIGHTS:
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve_source(name: str, settings: Settings, *, local: bool, field: str = FIELD) -> AdapterSource:
    name = name.strip()
    if not name:
        raise UnknownModel(f"empty IP-Adapter name: {_HINT}", field=field)
    if tiny_ip_adapter.is_builtin(name):
        return AdapterSource("builtin", name)
    if not local and name != settings.ip_adapter:
        path = model_dirs.find(name, settings, dirs=settings.controlnet_dirs, field=field, what="IP-Adapter",
                               flag="--controlnet-dirs")
        return _file_source(path, field)
    found = model_dirs.local_path(name, settings.controlnet_dirs)
    if found is not None:
        return _file_source(found, field)
    if _hub_file(name) is not None:
        return AdapterSource("hub", name)
    raise UnknownModel(f"unknown IP-Adapter {name!r}: {_HINT}", field=field)


def _file_source(path: Path, field: str) -> AdapterSource:
    if path.is_dir():
        raise UnknownModel(f"IP-Adapter {path.name!r} is a folder: name its weights file (e.g. "
                           f"{path.name}/ip-adapter_sd15.safetensors), with `image_encoder/` beside it", field=field)
    return AdapterSource("file", str(path))


# --------------------------------------------------------------------------------------------
# Loading, with a bounded cache


class AdapterCache:
    def __init__(self, settings: Settings, *, local: bool, capacity: int = CACHE_SIZE):
        self.settings = settings
        self.local = local
        self.capacity = capacity
        self._loaded: collections.OrderedDict[tuple, LoadedAdapter] = collections.OrderedDict()

    def get(self, name: str, model: LoadedModel, field: str = FIELD) -> LoadedAdapter:
        source = resolve_source(name, self.settings, local=self.local, field=field)
        key = (source, str(model.device), str(model.dtype))
        if key in self._loaded:
            self._loaded.move_to_end(key)
            adapter = self._loaded[key]
        else:
            adapter = self._load(name, source, model.device, model.dtype, field)
            self._loaded[key] = adapter
            while len(self._loaded) > self.capacity:
                log.info("IP-Adapter %s dropped from the cache", self._loaded.popitem(last=False)[1].name)
            log.info("IP-Adapter %s loaded", name)
        check_fits(adapter, model, field)
        return adapter

    def names(self) -> list[str]:
        return [a.name for a in self._loaded.values()]

    def _load(self, name: str, source: AdapterSource, device: torch.device, dtype: torch.dtype,
              field: str) -> LoadedAdapter:
        try:
            if source.kind == "builtin":
                state_dict, encoder = tiny_ip_adapter.build(source.ref)
                processor = _processor(encoder, None)
            else:
                path = Path(source.ref) if source.kind == "file" else self._fetch(source.ref, field)
                state_dict = _read_state_dict(path, self.settings.allow_pickle, field)
                encoder, processor = self._load_encoder(path, dtype, field)
        except LatentBridgeError as exc:
            exc.field = field
            raise
        _check_kind(name, state_dict, encoder, field)
        state_dict = {part: {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
                      for part, weights in state_dict.items() if part in ("image_proj", "ip_adapter")}
        encoder.to(device=device, dtype=dtype)
        encoder.eval()
        return LoadedAdapter(name=name, source=source, state_dict=state_dict, encoder=encoder, processor=processor)

    def _load_encoder(self, path: Path, dtype: torch.dtype, field: str):
        from transformers import CLIPVisionModelWithProjection

        folder = path.parent / ENCODER_FOLDER
        if not (folder / "config.json").is_file():
            raise UnknownModel(f"IP-Adapter {path.name} needs its image encoder: put the CLIP vision model's folder "
                               f"(config.json + model.safetensors) beside it as {ENCODER_FOLDER}/ (as in "
                               "h94/IP-Adapter)", field=field)
        check_component_weights(folder, f"{path.parent.name}/{ENCODER_FOLDER}", self.settings.allow_pickle, field)
        try:
            encoder = CLIPVisionModelWithProjection.from_pretrained(
                str(folder), dtype=dtype, local_files_only=True,
                use_safetensors=None if self.settings.allow_pickle else True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise LatentBridgeError(f"could not load the image encoder of IP-Adapter {path.name}: {_first_line(exc)}",
                                    field=field, code=ErrorCode.model_load_failed) from None
        return encoder, _processor(encoder, folder)

    def _fetch(self, name: str, field: str) -> Path:
        """A hub file and the `image_encoder/` folder beside it, from the cache or downloaded once."""
        from huggingface_hub import hf_hub_download, snapshot_download

        repo_id, filename = _hub_file(name)
        folder = Path(filename).parent.as_posix()
        encoder = ENCODER_FOLDER if folder == "." else f"{folder}/{ENCODER_FOLDER}"
        suffixes = (".json",) + SAFE_WEIGHTS + (PICKLE_WEIGHTS if self.settings.allow_pickle else ())
        patterns = [f"{encoder}/*{suffix}" for suffix in suffixes]
        offline = _hub_offline(self.settings)
        try:
            path = Path(hf_hub_download(repo_id, filename, local_files_only=offline))
            snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline)
        except Exception as exc:  # huggingface_hub raises many types for "not here / not reachable"
            reason = ("it is not in the local cache and downloads are off" if offline
                      else download.failure_reason(repo_id, exc))
            raise UnknownModel(f"could not get IP-Adapter {name!r}: {reason}. Instead, {_HINT}", field=field) from None
        return path


def _processor(encoder, folder: Path | None):
    """The image processor for the encoder: its own (preprocessor_config.json) or CLIP's, at its size."""
    from transformers import CLIPImageProcessor

    if folder is not None and (folder / "preprocessor_config.json").is_file():
        return CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
    size = encoder.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)


def _read_state_dict(path: Path, allow_pickle: bool, field: str) -> dict:
    check_weights_file(path, allow_pickle, what="IP-Adapter")
    if path.suffix.lower() in SAFE_WEIGHTS:
        from safetensors import safe_open

        state_dict: dict = {"image_proj": {}, "ip_adapter": {}}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                part, _, rest = key.partition(".")
                if part in state_dict and rest:
                    state_dict[part][rest] = f.get_tensor(key)
        return state_dict
    try:  # a pickle the user allowed: tensors only, never arbitrary objects
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a broken or foreign pickle
        raise LatentBridgeError(f"could not read IP-Adapter {path.name}: {_first_line(exc)}", field=field,
                                code=ErrorCode.model_load_failed) from None


def _check_kind(name: str, state_dict, encoder, field: str) -> None:
    """An IP-Adapter whose image projection takes what its encoder gives (refused otherwise, as are
    FaceID adapters: they need face embeddings from insightface, not an image encoder)."""
    proj = state_dict.get("image_proj") if isinstance(state_dict, dict) else None
    if not proj or not state_dict.get("ip_adapter"):
        raise LatentBridgeError(f"{name} is not an IP-Adapter (it has no image_proj.* and ip_adapter.* weights)",
                                field=field, code=ErrorCode.model_load_failed)
    config = encoder.config
    if "proj.weight" in proj:  # plain: the pooled image embedding
        takes, gives = proj["proj.weight"].shape[-1], config.projection_dim
    elif "proj.3.weight" in proj:  # full: the encoder's hidden states
        takes, gives = proj["proj.0.weight"].shape[-1], config.hidden_size
    elif "proj_in.weight" in proj:  # plus (a resampler over the hidden states)
        takes, gives = proj["proj_in.weight"].shape[-1], config.hidden_size
    else:
        raise Unsupported(f"IP-Adapter {name} is a FaceID adapter: those need face embeddings (insightface), "
                          "which Latent Bridge does not compute; use a plain, plus or full IP-Adapter", field=field)
    if takes != gives:
        raise LatentBridgeError(f"the image encoder beside IP-Adapter {name} gives {gives}-wide embeddings but the "
                                f"adapter takes {takes}: put its own encoder in {ENCODER_FOLDER}/", field=field,
                                code=ErrorCode.model_load_failed)


def check_fits(adapter: LoadedAdapter, model: LoadedModel, field: str = FIELD) -> None:
    """Refuse an adapter made for another UNet (other widths or attention layers), before it runs."""
    unet = model.base.unet
    layout = tiny_ip_adapter.cross_attention_layout(unet)
    weights = adapter.state_dict["ip_adapter"]
    shapes = {key_id: tuple(weights[f"{key_id}.to_k_ip.weight"].shape)
              for key_id, _, _ in layout if f"{key_id}.to_k_ip.weight" in weights}
    expected = {key_id: (hidden, width) for key_id, hidden, width in layout}
    count = sum(1 for key in weights if key.endswith(".to_k_ip.weight"))
    if shapes != expected or count != len(layout):
        width = next(iter(weights.values())).shape[-1]
        raise Unsupported(f"IP-Adapter {adapter.name!r} is made for another model ({count} cross-attention layers "
                          f"{width} wide); the loaded model {model.name!r} ({model.family}) has {len(layout)} of "
                          f"{unet.config.cross_attention_dim}: pick an IP-Adapter for this model", field=field)


# --------------------------------------------------------------------------------------------
# One request's references in a pipeline call


@dataclass
class ReferenceRun:
    adapter: LoadedAdapter
    images: list[Image.Image]  # RGB
    weight: float


def resolve(cache: AdapterCache, model: LoadedModel, request: GenerationRequest,
            inputs: dict[str, Image.Image]) -> ReferenceRun | None:
    """The request's reference images with their adapter, or None. Weight 0 takes no part (the image
    is exactly the one without references), but its images and adapter name are still checked."""
    reference = request.reference
    if reference is None:
        return None
    if model.family not in FAMILIES:
        raise Unsupported(f"reference images (IP-Adapter) are available for SD 1.x/2.x and SDXL models, not "
                          f"{model.family}", field="reference")
    images = []
    for i in range(reference.images):
        image = inputs.get(f"reference.{i}")
        if image is None:
            raise MissingImage(f"reference image {i} is missing (the upload with role reference.{i})", field="reference")
        images.append(image.convert("RGB"))
    name = adapter_name(request, model, cache.settings)
    if reference.weight == 0:
        resolve_source(name, cache.settings, local=cache.local)
        return None
    return ReferenceRun(cache.get(name, model), images, reference.weight)


_MISSING = object()


@contextlib.contextmanager
def applied_reference(run: ReferenceRun | None, pipe):
    """Load the adapter into `pipe` for one call; yields the call's extra keyword arguments."""
    if run is None:
        yield {}
        return
    unet = pipe.unet
    saved = _UnetState(unet)
    encoder, processor = getattr(pipe, "image_encoder", None), getattr(pipe, "feature_extractor", None)
    pipe.register_modules(image_encoder=run.adapter.encoder, feature_extractor=run.adapter.processor)
    try:
        with _quiet_dtype_notice():
            # The state dict is the cached one: nothing is read from disk here.
            pipe.load_ip_adapter(run.adapter.state_dict, subfolder="", weight_name="", image_encoder_folder=None)
        pipe.set_ip_adapter_scale(run.weight)
        # One adapter, all its images: their image tokens are concatenated in the cross-attention.
        yield {"ip_adapter_image": [list(run.images)]}
    finally:
        saved.restore(unet)
        pipe.register_modules(image_encoder=encoder, feature_extractor=processor)


class _UnetState:
    """What `load_ip_adapter` changes on a UNet, to put back exactly (diffusers' own
    `unload_ip_adapter` installs fresh default processors instead of the ones that were there)."""

    def __init__(self, unet):
        self.processors = dict(unet.attn_processors)
        self.projection = unet.encoder_hid_proj
        self.projection_registered = "encoder_hid_proj" in unet._modules
        self.projection_type = unet.config.encoder_hid_dim_type
        self.text_projection = getattr(unet, "text_encoder_hid_proj", _MISSING)

    def restore(self, unet) -> None:
        unet.set_attn_processor(dict(self.processors))  # (it pops from the dict it is given)
        if self.projection_registered:
            unet.encoder_hid_proj = self.projection
        else:  # a plain attribute, as the UNet's constructor left it
            unet._modules.pop("encoder_hid_proj", None)
            object.__setattr__(unet, "encoder_hid_proj", self.projection)
        unet.config.encoder_hid_dim_type = self.projection_type
        if self.text_projection is _MISSING:
            unet.__dict__.pop("text_encoder_hid_proj", None)
            unet._modules.pop("text_encoder_hid_proj", None)
        else:
            unet.text_encoder_hid_proj = self.text_projection


class _DropDtypeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32" not in record.getMessage()


@contextlib.contextmanager
def _quiet_dtype_notice():
    """The loader casts the UNet to its own dtype (a no-op), which diffusers reports as a warning on
    every load: not news for a server's log."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    notice = _DropDtypeNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)
