"""What this server has, in A1111's words: /scripts, /script-info, /extensions, /prompt-styles, /cmd-flags.

The one always-on script here is sd-webui-controlnet's `controlnet` (a1111/controlnet.py), listed
as A1111 lists it; no selectable scripts or other extensions run, so a call that names one gets
A1111's own "not found" answer and a client asking "is ADetailer installed?" sees no. /cmd-flags answers A1111's flag names with this server's
settings: a safe subset that never holds the token or a path outside the folders it serves.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..jsonio import json_response
from ..security import is_loopback
from ...protocol import MAX_CONTROLS
from .controlnet_units import SCRIPT
from .errors import a1111_route
from .prompts import read_styles, styles_file
from .state import engine, settings


@a1111_route
async def scripts(request: web.Request) -> web.Response:
    return json_response({"txt2img": [SCRIPT], "img2img": [SCRIPT]})


@a1111_route
async def script_info(request: web.Request) -> web.Response:
    # Its arguments are the units (`alwayson_scripts.controlnet.args`), as the extension's are.
    args = [{"label": f"ControlNet Unit {i}", "value": None, "minimum": None, "maximum": None, "step": None,
             "choices": None} for i in range(MAX_CONTROLS)]
    return json_response([{"name": SCRIPT, "is_alwayson": True, "is_img2img": is_img2img, "args": args}
                          for is_img2img in (False, True)])


@a1111_route
async def extensions(request: web.Request) -> web.Response:
    return json_response([])


@a1111_route
async def prompt_styles(request: web.Request) -> web.Response:
    styles = await asyncio.to_thread(read_styles, styles_file(settings(request.app)))
    return json_response([{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles])


def _first(paths) -> str | None:
    return str(paths[0]) if paths else None


@a1111_route
async def cmd_flags(request: web.Request) -> web.Response:
    cfg = settings(request.app)
    status = engine(request.app).status
    dtype = status.dtype or cfg.dtype
    device = status.device or cfg.device or ""
    return json_response({
        "api": True,
        "nowebui": True,
        "listen": not is_loopback(cfg.host),
        "server_name": cfg.host,
        "port": cfg.port,
        "api_auth": None,  # never the token: A1111's api_auth is user:password pairs
        "api_log": False,
        "share": False,
        "cors_allow_origins": ",".join(cfg.allowed_origins) or None,
        "ckpt": status.name and status.name.rsplit("/", 1)[-1],
        "ckpt_dir": _first(cfg.model_dirs),
        "lora_dir": _first(cfg.lora_dirs),
        "embeddings_dir": _first(cfg.embedding_dirs),
        "esrgan_models_path": _first(cfg.upscaler_dirs),
        "vae_dir": _first(cfg.vae_dirs),
        "data_dir": str(cfg.data_dir),
        "styles_file": [str(styles_file(cfg))],
        "use_cpu": ["all"] if device.startswith("cpu") else [],
        "device_id": device.partition(":")[2] or None,
        "precision": "full" if dtype == "float32" else "autocast",
        "no_half": dtype == "float32",
        "no_half_vae": dtype == "float32",
        "medvram": cfg.cpu_offload,
        "lowvram": False,
        "xformers": False,
        "opt_sdp_attention": True,
        "disable_safe_unpickle": cfg.allow_pickle,
        "allow_code": False,
        "enable_insecure_extension_access": False,
        "hide_ui_dir_config": False,
        "freeze_settings": False,
        "no_hashing": False,
        "api_server_stop": False,
        "skip_torch_cuda_test": False,
    })
