"""One settings object for the whole backend: defaults < environment (LATENTBRIDGE_*) < CLI flags."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from .protocol import DEFAULT_PORT, MAX_BATCH, MAX_SIDE, MAX_STEPS

ENV_PREFIX = "LATENTBRIDGE_"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "latentbridge"


class Settings(BaseModel):
    # --- model / engine ---
    model: str = Field("tiny", description="Hub id, local diffusers folder, single .safetensors file, or `tiny`")
    model_config_dir: str | None = Field(
        None, description="Local diffusers folder whose configs a single-file checkpoint should use"
    )
    model_dirs: list[Path] = Field(default_factory=list, description="Folders a remote client may pick models from")
    lora_dirs: list[Path] = Field(default_factory=list, description="Folders LoRA names resolve in")
    device: str | None = Field(None, description="cuda, cuda:1, mps or cpu; automatic when unset")
    dtype: Literal["float16", "bfloat16", "float32"] | None = Field(None, description="Automatic when unset")
    allow_pickle: bool = Field(False, description="Allow .ckpt/.bin/.pt pickle weights (unsafe: code execution)")
    vae_slicing: bool = False
    vae_tiling: Literal["auto", "on", "off"] = Field("auto", description="auto: tile when larger than native size")
    cpu_offload: bool = Field(False, description="Model CPU offload for small GPUs")
    taesd: str | None = Field(None, description="TAESD (AutoencoderTiny) hub id or folder for SD1/SD2 (and SD3/Flux "
                              "ones: taesd3, taef1): better previews, and the fast decoder of live frames; "
                              "`tiny-taesd` is a random one built in code (tests)")
    taesdxl: str | None = Field(None, description="TAESDXL (AutoencoderTiny for SDXL latents) hub id or folder, e.g. "
                                "madebyollin/taesdxl: previews and live frames of SDXL models")
    offline: bool = Field(False, description="Never reach a model hub")
    controlnet_dirs: list[Path] = Field(default_factory=list, description="Folders ControlNet and IP-Adapter names "
                                        "resolve in (diffusers folders or .safetensors files)")
    controlnet_models: list[str] = Field(default_factory=list, description="Default ControlNet per control type, as "
                                         "TYPE=NAME (e.g. depth=lllyasviel/control_v11f1p_sd15_depth); the built-in "
                                         "tiny ones serve the tiny models")
    controlnet_cache: int = Field(3, ge=1, le=32, description="ControlNets kept loaded at once (least recently used "
                                  "dropped first)")
    ip_adapter: str | None = Field(None, description="Default IP-Adapter for reference images: a hub id, folder or "
                                   ".safetensors file (its image encoder beside it), or a name inside the ControlNet "
                                   "folders")
    lock_model: bool = Field(False, description="Refuse per-request model switches (shared servers): clients "
                             "use the model the server was started with")
    depth_estimator: str | None = Field(None, description="Depth estimator for the depth and normal preprocessors: "
                                        "a transformers depth-estimation hub id (e.g. "
                                        "depth-anything/Depth-Anything-V2-Small-hf), a local folder, or `tiny-depth` "
                                        "(random, for tests); unset: those preprocessors are off")
    segmentation_estimator: str | None = Field(None, description="Semantic-segmentation estimator for the "
                                               "segmentation preprocessor (ADE20K colours): a transformers hub id "
                                               "(e.g. openmmlab/upernet-convnext-small), a local folder, or "
                                               "`tiny-segmentation` (random, for tests); unset: that preprocessor is off")
    upscaler_dirs: list[Path] = Field(default_factory=list,
                                      description="Folders of upscaler models (ESRGAN, SwinIR, HAT, ... as .safetensors)")
    embedding_dirs: list[Path] = Field(default_factory=list,
                                       description="Folders of textual-inversion embeddings (used in prompts by file name)")
    vae_dirs: list[Path] = Field(default_factory=list, description="Folders of VAEs a request may pick")

    # --- speed (docs/engine.md, "Speed options"; bench/gpu.sh measures each before it becomes a default) ---
    attention: Literal["sdpa", "eager"] = Field("sdpa", description="Attention kernels: sdpa (torch's fused "
                                                "scaled_dot_product_attention) or eager (plain matmul + softmax)")
    channels_last: bool = Field(False, description="UNet and VAE in channels_last memory format (CUDA; skipped on CPU)")
    fused_qkv: bool = Field(False, description="Fuse the attention q/k/v projections into one matmul (undone while "
                            "a request's LoRAs are applied, which target the separate projections)")
    compile: Literal["off", "default", "max-autotune"] = Field("off", description="torch.compile the denoiser "
                                                                 "(CUDA; skipped on CPU), warmed up at load for "
                                                                 "--compile-sizes; other sizes run uncompiled")
    compile_sizes: list[str] = Field(default_factory=list, description="WIDTHxHEIGHT sizes compiled and warmed up at "
                                     "load (default: the model's native square size); live sessions add theirs")
    cuda_graphs: bool = Field(False, description="CUDA graphs for the compiled sizes (torch.compile's reduce-overhead "
                              "mode): fixed shapes such as live frames replay without launch overhead (CUDA only)")
    step_cache: Literal["off", "on"] = Field("off", description="Reuse the deep layers' output between steps (opt-in "
                                             "trade of quality for speed): DeepCache-style for UNet models, diffusers' "
                                             "first-block cache for SD3/Flux")
    step_cache_interval: int = Field(3, ge=2, le=10, description="UNet step cache: one full step every N steps")
    step_cache_threshold: float = Field(0.08, gt=0.0, le=1.0, description="SD3/Flux first-block cache: reuse while "
                                        "the first block's output changes less than this (relative)")

    # --- live mode (docs/live.md) ---
    live_sessions: int = Field(8, ge=0, le=64, description="Live sessions open at once on this server (0: live off)")
    live_sessions_per_client: int = Field(2, ge=1, le=16, description="Live sessions one connection may hold")

    # --- server ---
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    token: str | None = Field(None, description="Bearer token; required when listening beyond loopback")
    allowed_origins: list[str] = Field(default_factory=list, description="Browser origins trusted besides none")
    allowed_hosts: list[str] = Field(default_factory=list, description="Extra Host header names accepted")
    data_dir: Path = Field(default_factory=default_data_dir)
    resume_jobs: bool = Field(True, description="After a crash or restart, run again the jobs that were queued or "
                              "running (same seed, same images); off: they are marked interrupted")
    log_format: Literal["text", "json"] = Field("text", description="Server log lines as text or as JSON objects")
    styles_file: Path | None = Field(None, description="A1111 prompt styles (styles.csv); <data-dir>/styles.csv when unset")

    # --- limits ---
    max_body_bytes: int = 64 * 1024 * 1024
    max_message_bytes: int = 64 * 1024 * 1024
    max_width: int = MAX_SIDE
    max_height: int = MAX_SIDE
    max_pixels: int = 2048 * 2048
    max_steps: int = MAX_STEPS
    max_batch: int = MAX_BATCH
    max_queue: int = 32
    job_timeout_s: float = 600.0
    retention_jobs: int = 500
    preview_interval_s: float = Field(0.1, description="At most one preview per client this often")

    # --- connection limits (docs/http-api.md, "Limits and hardening") ---
    max_connections: int = Field(512, ge=1, description="Open connections in total (lowered at start to fit "
                                 "the open-file limit); idle ones are closed first to make room, else 503")
    max_connections_per_client: int = Field(64, ge=1, description="Open connections per client address; "
                                            "idle ones are closed first to make room, else 503")
    header_timeout_s: float = Field(10.0, gt=0, description="Close a connection whose request line and "
                                    "headers take longer than this")
    body_timeout_s: float = Field(30.0, gt=0, description="Close a connection whose request body sends "
                                  "nothing for this long")
    keepalive_timeout_s: float = Field(75.0, gt=0, description="Close an idle keep-alive connection after this long")
    ws_auth_timeout_s: float = Field(5.0, gt=0, description="Close a websocket that has not authenticated "
                                     "(token in a header or in `hello`) after this long")
    auth_backoff_max_s: float = Field(30.0, ge=0, description="Longest delay imposed on an address that keeps "
                                      "sending wrong tokens (the delay doubles per failure)")
    max_upload_bytes_per_connection: int = Field(160 * 1024 * 1024, ge=1, description="Websocket uploads "
                                                 "waiting for a submit, per connection (bytes)")
    max_upload_bytes_total: int = Field(512 * 1024 * 1024, ge=1, description="Websocket uploads waiting for "
                                        "a submit, all connections together (bytes)")
    upload_ttl_s: float = Field(300.0, gt=0, description="A websocket upload not used by a submit within "
                                "this time is dropped")

    # --- scale-out on Ray Serve (docs/ray.md) ---
    ray: str | None = Field(None, description="Run the engine as Ray Serve replicas behind this server: a Ray "
                            "cluster address (auto, HOST:PORT) or `local` (start Ray on this machine); unset: the "
                            "engine runs in this process")
    ray_min_replicas: int = Field(1, ge=0, description="Engine replicas kept running (autoscaling lower bound)")
    ray_max_replicas: int = Field(1, ge=1, description="Engine replicas at most (autoscaling upper bound; equal "
                                  "to --ray-min-replicas: a fixed number)")
    ray_gpus_per_replica: float = Field(1.0, ge=0, description="GPUs each engine replica reserves (0: CPU replicas)")
    ray_cpus_per_replica: float = Field(1.0, ge=0, description="CPUs each engine replica reserves")
    ray_app: str = Field("latentbridge", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$",
                         description="Name of the Ray Serve application holding the engine replicas")

    @model_validator(mode="after")
    def _replica_bounds(self) -> "Settings":
        if self.ray_max_replicas < self.ray_min_replicas:
            raise ValueError(f"ray_max_replicas ({self.ray_max_replicas}) is below ray_min_replicas "
                             f"({self.ray_min_replicas})")
        return self

    @field_validator("compile_sizes")
    @classmethod
    def _sizes(cls, sizes: list[str]) -> list[str]:
        for size in sizes:
            parse_size(size)
        return sizes

    def engine_view(self) -> dict[str, Any]:
        return self.model_dump(include={"model", "device", "dtype"})


def parse_size(text: str) -> tuple[int, int]:
    """`512x768` → (512, 768); ValueError unless both sides are multiples of 8 within 64..MAX_SIDE."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT (e.g. 512x512)")
    width, height = (int(p) for p in parts)
    if not all(64 <= v <= MAX_SIDE and v % 8 == 0 for v in (width, height)):
        raise ValueError(f"{text!r}: each side must be a multiple of 8 in 64..{MAX_SIDE}")
    return width, height


# Fields settable from the environment / command line, with their flag names.
_LIST_FIELDS = {"model_dirs", "lora_dirs", "controlnet_dirs", "controlnet_models", "upscaler_dirs", "embedding_dirs",
                "vae_dirs", "allowed_origins", "allowed_hosts", "compile_sizes"}


def _coerce(name: str, raw: str) -> Any:
    if name in _LIST_FIELDS:
        return [p for p in raw.split(os.pathsep if name.endswith("dirs") else ",") if p]
    return raw


def settings_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw)
    return values


def add_settings_arguments(parser: argparse.ArgumentParser, fields: list[str] | None = None) -> None:
    """Add `--flag` for each settings field (all of them unless `fields` narrows it)."""
    for name, info in Settings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = info.description or ""
        if info.annotation is bool:  # --flag / --no-flag, so a default of True can be turned off too
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif name in _LIST_FIELDS:
            parser.add_argument(flag, dest=name, action="append", default=None, help=help_text + " (repeatable)")
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)


def load_settings(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    values = settings_from_env(environ)
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None})
    values.update(overrides)
    return Settings.model_validate(values)
