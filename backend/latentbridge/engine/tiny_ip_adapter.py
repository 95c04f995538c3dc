"""Built-in random IP-Adapters that fit the built-in tiny models, made in code with no download.

Each is what an IP-Adapter file holds, in the original (h94/IP-Adapter) layout, plus its image
encoder: a tiny random `CLIPVisionModelWithProjection`. The weights come from a fixed seed, so
every process builds the same adapter. The state dict has the shapes diffusers' converters
(`UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers` / `_attn_to_diffusers`)
expect for a plain IP-Adapter:

- `image_proj`: `proj.weight` (4 tokens x cross-attention width, image-embedding width),
  `proj.bias`, `norm.weight`, `norm.bias` (a LayerNorm over the cross-attention width);
- `ip_adapter`: `<k>.to_k_ip.weight` / `<k>.to_v_ip.weight` (hidden size x cross-attention width)
  for the UNet's k-th attention processor, k = 1, 3, 5, ... over its cross-attention processors in
  the UNet's own order (`cross_attention_layout`).

- `tiny-ip-adapter`       SD1 (`tiny`, `tiny-inpaint`)
- `tiny-ip-adapter-sdxl`  SDXL (`tiny-sdxl`)
"""

from __future__ import annotations

import torch

from ..protocol import BUILTIN_IP_ADAPTERS
from . import tiny

_SEED = 20250202
IMAGE_SIZE = 32  # pixels the tiny image encoder sees
EMBED_DIM = 32  # its image-embedding (projection) width
TOKENS = 4  # image tokens a plain IP-Adapter adds to the cross-attention

# The tiny model each built-in adapter is made for.
BASE = {"tiny-ip-adapter": "tiny", "tiny-ip-adapter-sdxl": "tiny-sdxl"}
assert set(BASE) == set(BUILTIN_IP_ADAPTERS)
# The built-in adapter that fits each built-in model (random-mid, SD3 and Flux have none).
SERVES = {"tiny": "tiny-ip-adapter", "tiny-inpaint": "tiny-ip-adapter", "tiny-sdxl": "tiny-ip-adapter-sdxl"}


def is_builtin(name: str) -> bool:
    return name in BASE


def default_for(model_name: str) -> str | None:
    """The built-in IP-Adapter for a built-in model, if it has one."""
    return SERVES.get(model_name)


def cross_attention_layout(unet) -> list[tuple[int, int, int]]:
    """(key id, hidden size, cross-attention width) of each cross-attention processor of `unet`, in
    the order and numbering IP-Adapter files use (diffusers' `_convert_ip_adapter_attn_to_diffusers`)."""
    config = unet.config
    layout, key_id = [], 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue  # self-attention: an IP-Adapter leaves it alone
        if name.startswith("mid_block"):
            hidden = config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = config.block_out_channels[int(name[len("down_blocks.")])]
        layout.append((key_id, hidden, config.cross_attention_dim))
        key_id += 2
    return layout


def build(name: str):
    """(state dict {"image_proj": {...}, "ip_adapter": {...}}, image encoder) of a built-in adapter."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if name not in BASE:
        raise ValueError(f"unknown built-in IP-Adapter {name!r}: one of {', '.join(BASE)}")
    unet = tiny.build_pipeline(BASE[name]).unet
    cross = unet.config.cross_attention_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=8, projection_dim=EMBED_DIM))
        image_proj = {
            "proj.weight": torch.randn(TOKENS * cross, EMBED_DIM) * 0.5,
            "proj.bias": torch.randn(TOKENS * cross) * 0.05,
            "norm.weight": 1 + torch.randn(cross) * 0.05,
            "norm.bias": torch.randn(cross) * 0.05,
        }
        ip_adapter = {}
        for key_id, hidden, width in cross_attention_layout(unet):
            ip_adapter[f"{key_id}.to_k_ip.weight"] = torch.randn(hidden, width) * 0.5
            ip_adapter[f"{key_id}.to_v_ip.weight"] = torch.randn(hidden, width)  # strong: the effect shows
    encoder.eval()
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}, encoder
