"""Finding, loading and placing models: hub ids, diffusers folders, single files, built-ins.

One loaded model is a `LoadedModel`: the text-to-image pipeline as loaded plus the img2img and
inpainting pipelines derived from it with `from_pipe`, which share the very same weight tensors
(switching modes never reloads or copies weights).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import model_dirs
from ..model_dirs import PICKLE_WEIGHTS, SAFE_WEIGHTS
from ..protocol import ErrorCode, LatentBridgeError, Mode, UnknownModel, Unsupported
from ..settings import Settings
from . import download, tiny

log = logging.getLogger(__name__)

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")

# Which modes each family can run: diffusers has text-to-image, img2img and inpainting pipelines
# for all of them (outpaint is inpainting on an extended canvas). tests/backend/test_engine_flow.py
# runs every mode on the SD3 and Flux tiny models.
FAMILY_MODES: dict[str, set[Mode]] = {
    "sd1": set(Mode),
    "sd2": set(Mode),
    "sdxl": set(Mode),
    "sd3": set(Mode),
    "flux": set(Mode),
}
# Seamless tiling wraps the convolutions of a UNet; SD3/Flux transformers see the image as a
# sequence of patches with non-periodic position embeddings, which no padding makes wrap.
SEAMLESS_FAMILIES = {"sd1", "sd2", "sdxl"}


# --------------------------------------------------------------------------------------------
# Device and dtype


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` when given, else the best available: CUDA, then Apple MPS, then CPU."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise LatentBridgeError(f"unknown device {requested!r}: use cuda, cuda:N, mps or cpu", field="device", code=ErrorCode.invalid_request) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LatentBridgeError("device 'cuda' requested but this torch has no CUDA (install the CUDA build of torch)", field="device", code=ErrorCode.invalid_request)
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise LatentBridgeError("device 'mps' requested but MPS is not available", field="device", code=ErrorCode.invalid_request)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """fp16 on CUDA and MPS (bf16 when asked), fp32 on CPU (half precision is slow or missing there)."""
    if requested:
        return getattr(torch, requested)
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.float32


# --------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "builtin" | "folder" | "single_file" | "hub"
    ref: str  # preset name, path, or hub id

    @property
    def name(self) -> str:
        return self.ref if self.kind in ("builtin", "hub") else Path(self.ref).name


_HINT = (
    "pass a local diffusers folder (with model_index.json), a single .safetensors checkpoint, "
    "a hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5' (downloaded once, needs the network), "
    "or 'tiny' for the built-in test model"
)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and "\\" not in name


def resolve_source(name: str, settings: Settings, *, local: bool = True) -> ModelSource:
    """Where the model called `name` comes from.

    local=False is for names sent by a remote client: only built-ins, the configured model, and
    files/folders inside `settings.model_dirs` (no path escapes them) are accepted.
    """
    name = name.strip()
    if not name:
        raise UnknownModel(f"empty model name: {_HINT}", field="model")
    if tiny.is_builtin(name):
        return ModelSource("builtin", name)
    if not local and name != settings.model:
        return _source_for_path(model_dirs.find(name, settings))
    found = model_dirs.local_path(name, settings.model_dirs)
    if found is not None:
        return _source_for_path(found)
    path = Path(os.path.expanduser(name))
    if path.suffix.lower() in SAFE_WEIGHTS + PICKLE_WEIGHTS or name.startswith((".", "/", "~")):
        raise UnknownModel(f"model file {name!r} does not exist: {_HINT}", field="model")
    if _looks_like_hub_id(name):
        return ModelSource("hub", name)
    raise UnknownModel(f"unknown model {name!r}: {_HINT}", field="model")


def _source_for_path(path: Path) -> ModelSource:
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise UnknownModel(f"{path} is a folder without model_index.json (not a diffusers model): {_HINT}", field="model")
        return ModelSource("folder", str(path))
    return ModelSource("single_file", str(path))


def list_local_models(settings: Settings) -> list[str]:
    """Model names a client may pick: built-ins plus what the model folders hold."""
    return list(tiny.PRESETS) + [entry.name for entry in model_dirs.entries(settings)]


def check_safetensors(path: Path, field: str = "model", label: str | None = None) -> None:
    """Read a .safetensors header (cheap: no tensor data), so a truncated or corrupt file is
    reported as such before diffusers fails on it with a message about something else."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        raise LatentBridgeError(f"{label or path.name} is corrupt or truncated: not a valid .safetensors file ({_first_line(exc)}); "
                                "download or convert it again", field=field,
                                code=ErrorCode.invalid_request if field == "loras" else ErrorCode.model_load_failed) from None


def check_weights_file(path: Path, allow_pickle: bool, what: str = "weights") -> None:
    """Refuse pickle files (they can run arbitrary code when loaded) unless the user opted in, and
    corrupt safetensors files."""
    suffix = path.suffix.lower()
    if suffix in SAFE_WEIGHTS:
        check_safetensors(path, "model" if what == "weights" else "loras")
        return
    if suffix in PICKLE_WEIGHTS:
        if allow_pickle:
            log.warning("loading pickle %s %s (allow_pickle is on)", what, path.name)
            return
        raise LatentBridgeError(
            f"{path.name} is a pickle file ({suffix}), which can run code when loaded: convert it to .safetensors, "
            "or start with --allow-pickle if you trust it",
            field="model" if what == "weights" else "loras",
            code=ErrorCode.unsupported,
        )
    raise UnknownModel(f"{path.name}: not a weights file (expected .safetensors)", field="model")


# --------------------------------------------------------------------------------------------
# Loading


def family_of(pipe) -> str:
    cls = type(pipe).__name__
    if "Flux" in cls:
        return "flux"
    if "StableDiffusion3" in cls:
        return "sd3"
    if "XL" in cls:
        return "sdxl"
    text_encoder = getattr(pipe, "text_encoder", None)
    # SD 2.x uses OpenCLIP ViT-H (1024 wide); SD 1.x uses CLIP ViT-L (768).
    if text_encoder is not None and getattr(text_encoder.config, "hidden_size", 0) == 1024:
        return "sd2"
    return "sd1"


def _hub_offline(settings: Settings) -> bool:
    return settings.offline or os.environ.get("HF_HUB_OFFLINE") == "1"


def check_folder_weights(folder: Path, allow_pickle: bool) -> None:
    """Refuse a diffusers folder with a component stored only as pickle weights (.bin/.ckpt/.pt),
    unless the user opted in, or with a corrupt .safetensors file: checked before loading, so the
    error can say what is wrong and what to do."""
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        check_component_weights(component, f"{folder.name}/{component.name}", allow_pickle)


def check_component_weights(component: Path, label: str, allow_pickle: bool, field: str = "model") -> None:
    """The same checks for one component's folder (a ControlNet folder is one component)."""
    files = [f for f in component.iterdir() if f.is_file()]
    suffixes = {f.suffix.lower() for f in files}
    for weights in (f for f in files if f.suffix.lower() in SAFE_WEIGHTS):
        check_safetensors(weights, field=field, label=f"{label}/{weights.name}")
    if suffixes & set(PICKLE_WEIGHTS) and not suffixes & set(SAFE_WEIGHTS):
        if allow_pickle:
            log.warning("loading pickle weights of %s (allow_pickle is on)", label)
            return
        raise LatentBridgeError(
            f"{label} has only pickle weights (.bin/.ckpt/.pt), which can run code when "
            "loaded: convert them to .safetensors, or start with --allow-pickle if you trust them",
            field=field,
            code=ErrorCode.unsupported,
        )


def _load_folder_or_hub(ref: str, settings: Settings, dtype: torch.dtype, hub: bool, on_download=None):
    from diffusers import AutoPipelineForInpainting, AutoPipelineForText2Image, DiffusionPipeline

    if hub and not _hub_offline(settings):
        # Fetch first (reporting progress), then load the local snapshot like any folder.
        ref, hub = download.fetch(ref, settings.allow_pickle, on_download or (lambda fraction: None)), False
    if not hub:
        check_folder_weights(Path(ref), settings.allow_pickle)
    # allow_pickle permits pickle weights where no safetensors exist; it never prefers them.
    kwargs = dict(dtype=dtype, use_safetensors=None if settings.allow_pickle else True)
    if hub:
        kwargs["local_files_only"] = _hub_offline(settings)
    index = Path(ref) / "model_index.json" if not hub else None
    class_name = None
    if index is not None and index.exists():
        import json

        class_name = json.loads(index.read_text()).get("_class_name", "")
    if class_name and "Inpaint" in class_name:
        return AutoPipelineForInpainting.from_pretrained(ref, **kwargs)
    try:
        return AutoPipelineForText2Image.from_pretrained(ref, **kwargs)
    except ValueError:
        # A pipeline class AutoPipeline does not map (e.g. a dedicated inpainting repo on the hub).
        return DiffusionPipeline.from_pretrained(ref, **kwargs)


def _single_file_config(path: Path, settings: Settings) -> str | None:
    """A local diffusers folder whose configs describe this checkpoint, when one is known."""
    candidates = []
    if settings.model_config_dir:
        candidates.append(Path(settings.model_config_dir))
    candidates += [path.with_suffix(""), path.parent / (path.stem + ".config"), path.parent]
    for candidate in candidates:
        if (candidate / "model_index.json").exists():
            return str(candidate)
    if settings.model_config_dir:
        raise UnknownModel(f"--model-config-dir {settings.model_config_dir} has no model_index.json", field="model_config_dir")
    return None


def _load_single_file(path: Path, settings: Settings, dtype: torch.dtype):
    import json

    import diffusers

    check_weights_file(path, settings.allow_pickle)
    config = _single_file_config(path, settings)
    cls = diffusers.StableDiffusionPipeline
    if config is not None:
        class_name = json.loads((Path(config) / "model_index.json").read_text()).get("_class_name", "")
        cls = getattr(diffusers, class_name, None) or cls
        return cls.from_single_file(str(path), config=config, local_files_only=True, dtype=dtype)
    # No local config: diffusers infers the family from the weights and uses its config from the
    # hub cache (present once any model of that family was downloaded); never the network here.
    try:
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
        model_type = infer_diffusers_model_type(checkpoint)
        del checkpoint
        cls = _pipeline_class_for_model_type(model_type)
        return cls.from_single_file(str(path), local_files_only=True, dtype=dtype)
    except LatentBridgeError:
        raise
    except Exception as exc:  # diffusers raises several types for "config not found offline"
        raise UnknownModel(
            f"cannot find the configuration for {path.name} offline ({type(exc).__name__}). Put its diffusers "
            f"config folder (model_index.json + subfolders, e.g. from the base model's hub repo) next to it as "
            f"'{path.stem}/', or pass --model-config-dir <folder>",
            field="model",
        ) from None


def _pipeline_class_for_model_type(model_type: str):
    import diffusers

    if model_type.startswith("xl_inpaint"):
        return diffusers.StableDiffusionXLInpaintPipeline
    if model_type.startswith(("xl", "playground")):
        return diffusers.StableDiffusionXLPipeline
    if model_type.startswith("sd3"):
        return diffusers.StableDiffusion3Pipeline
    if model_type.startswith("flux"):
        return diffusers.FluxPipeline
    if "inpainting" in model_type:
        return diffusers.StableDiffusionInpaintPipeline
    return diffusers.StableDiffusionPipeline


def load_pipeline(source: ModelSource, settings: Settings, dtype: torch.dtype, on_download=None):
    """The pipeline as stored (on CPU, in `dtype`); raises typed errors with what to pass instead.
    `on_download(fraction or None)` is called while a hub model downloads."""
    try:
        if source.kind == "builtin":
            pipe = tiny.build_pipeline(source.ref)
            return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
        if source.kind == "single_file":
            return _load_single_file(Path(source.ref), settings, dtype)
        return _load_folder_or_hub(source.ref, settings, dtype, hub=source.kind == "hub", on_download=on_download)
    except LatentBridgeError:
        raise
    except (OSError, ValueError, EnvironmentError) as exc:
        if source.kind == "hub" and _hub_offline(settings):
            why = "--offline" if settings.offline else "HF_HUB_OFFLINE=1"
            raise UnknownModel(
                f"{source.ref!r} is not in the local model cache and downloads are off ({why} is set): run once with "
                f"the network, or {_HINT}",
                field="model",
            ) from None
        if source.kind == "hub":
            raise UnknownModel(
                f"could not get {source.ref!r}: it is not in the local model cache ({download.cache_folder(source.ref)}) "
                f"and downloading it from the Hugging Face hub failed: {download.failure_reason(source.ref, exc)}. "
                f"Instead, {_HINT}",
                field="model",
            ) from None
        raise LatentBridgeError(f"could not load {source.ref}: {_first_line(exc)}", field="model", code=ErrorCode.model_load_failed) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# The loaded model and its mode pipelines


@dataclass
class LoadedModel:
    name: str
    source: ModelSource
    family: str
    device: torch.device
    dtype: torch.dtype
    base: object  # the pipeline as loaded
    scheduler: object = None  # the model's own scheduler, never used to sample (fresh copies are)
    pipes: dict[str, object] = field(default_factory=dict)  # "text2image" | "image2image" | "inpaint"

    @property
    def inpaint_native(self) -> bool:
        """A dedicated inpainting model: its UNet takes latents + mask + masked image (9 channels)."""
        unet = getattr(self.base, "unet", None)
        return unet is not None and unet.config.in_channels == 9

    @property
    def native_size(self) -> int:
        """The pixel size the model was trained at (longest side)."""
        denoiser = getattr(self.base, "unet", None) or getattr(self.base, "transformer", None)
        default = 128 if self.family == "flux" else 64  # Flux's transformer config has no sample_size (1024 px)
        sample = getattr(denoiser.config, "sample_size", default) if denoiser is not None else default
        if isinstance(sample, (list, tuple)):
            sample = max(sample)
        return int(sample) * self.vae_scale

    @property
    def vae_scale(self) -> int:
        return int(getattr(self.base, "vae_scale_factor", 8))

    def denoiser(self):
        return getattr(self.base, "unet", None) or getattr(self.base, "transformer", None)

    def pipe(self, kind: str):
        """The pipeline for a mode, derived once from the base pipeline (shared weights)."""
        if kind not in self.pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

            auto = {
                "text2image": AutoPipelineForText2Image,
                "image2image": AutoPipelineForImage2Image,
                "inpaint": AutoPipelineForInpainting,
            }[kind]
            try:
                # dtype: from_pipe casts the (shared) modules to float32 unless told otherwise
                self.pipes[kind] = auto.from_pipe(self.base, dtype=self.dtype)
            except ValueError as exc:
                raise Unsupported(f"{self.family} model {self.name!r} has no {kind} pipeline in diffusers ({_first_line(exc)})") from None
            self.pipes[kind].set_progress_bar_config(disable=True)
        return self.pipes[kind]

    def control_pipe(self, kind: str, controlnet):
        """The ControlNet pipeline for a mode, derived from the base pipeline: it shares the very
        same UNet/transformer, VAE and text encoders (only the ControlNet is its own)."""
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

        import diffusers

        auto = {"text2image": AutoPipelineForText2Image, "image2image": AutoPipelineForImage2Image,
                "inpaint": AutoPipelineForInpainting}[kind]
        first = controlnet[0] if isinstance(controlnet, list) else controlnet
        if type(first).__name__ == "ControlNetUnionModel":
            # AutoPipeline maps a list of Union models to the plain SDXL ControlNet pipeline: name it.
            auto = getattr(diffusers, {"text2image": "StableDiffusionXLControlNetUnionPipeline",
                                       "image2image": "StableDiffusionXLControlNetUnionImg2ImgPipeline",
                                       "inpaint": "StableDiffusionXLControlNetUnionInpaintPipeline"}[kind])
        try:
            pipe = auto.from_pipe(self.base, controlnet=controlnet, dtype=self.dtype)
        except ValueError as exc:
            raise Unsupported(f"{self.family} model {self.name!r} has no ControlNet {kind} pipeline in diffusers "
                              f"({_first_line(exc)})", field="controls") from None
        pipe.set_progress_bar_config(disable=True)
        return pipe


def place(pipe, device: torch.device, settings: Settings) -> None:
    """Move to the device and apply the memory options."""
    pipe.set_progress_bar_config(disable=True)
    if settings.cpu_offload and device.type == "cuda":
        # Keeps only the active sub-model on the GPU: big saving, some speed cost.
        pipe.enable_model_cpu_offload(device=device)
    else:
        if settings.cpu_offload:
            log.warning("cpu_offload needs a CUDA device; ignored on %s (the model stays in %s memory)", device.type, device.type)
        pipe.to(device)
    vae = getattr(pipe, "vae", None)
    if vae is not None and settings.vae_slicing and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()


def looks_like_flux(source: ModelSource) -> bool:
    """Whether `source` is a Flux model, known before loading it: from a folder's model_index.json,
    else from the name (hub ids and files of Flux models carry it, e.g. black-forest-labs/FLUX.1-dev)."""
    index = Path(source.ref) / "model_index.json"
    if source.kind == "folder" and index.exists():
        import json

        return json.loads(index.read_text()).get("_class_name", "").startswith("Flux")
    return "flux" in Path(source.ref).name.lower()


def model_dtype(source: ModelSource, device: torch.device, requested: str | None = None) -> torch.dtype:
    """`pick_dtype`, except that Flux on CUDA defaults to bf16: FLUX.1 overflows in fp16 (black or
    NaN images). Flux must be known before loading: weights stored in bf16 lose range through fp16."""
    dtype = pick_dtype(device, requested)
    if requested is None and dtype == torch.float16 and device.type == "cuda" and looks_like_flux(source) \
            and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return dtype


def load(name: str, settings: Settings, *, local: bool = True, on_download=None, source: ModelSource | None = None,
         make_room=None) -> LoadedModel:
    """Resolve, load and place a model. `on_download(fraction or None)` reports a hub download,
    then `on_download(1.0)` once the weights are local. The weights are read into CPU memory first;
    `make_room(device)`, when given, is called just before they move to the device (the engine
    parks the model it is replacing there, so a switch needs device memory for one model only)."""
    source = source or resolve_source(name, settings, local=local)
    device = pick_device(settings.device)
    dtype = model_dtype(source, device, settings.dtype)
    pipe = load_pipeline(source, settings, dtype, on_download)
    if on_download is not None and source.kind == "hub":
        on_download(1.0)
    if make_room is not None:
        make_room(device)
    place(pipe, device, settings)
    loaded = LoadedModel(
        name=name, source=source, family=family_of(pipe), device=device, dtype=dtype, base=pipe, scheduler=pipe.scheduler
    )
    loaded.pipes["inpaint" if "Inpaint" in type(pipe).__name__ else "text2image"] = pipe
    return loaded


def park(loaded: LoadedModel) -> bool:
    """Move a model's weights to CPU memory to free its accelerator (while another loads); False
    when there is nothing to free (already on the CPU, or offloaded by accelerate's hooks)."""
    if loaded.device.type == "cpu" or getattr(loaded.base, "_offload_gpu_id", None) is not None:
        return False
    loaded.base.to("cpu")
    return True
