"""Built-in random ControlNets that fit the built-in tiny models, made in code with no download.

Each is derived from its family's tiny denoiser with diffusers' own `from_unet` /
`from_transformer`, so its shapes match the model exactly. A fresh ControlNet's output layers
("zero convolutions") start at zero, which would make it a no-op; here they get seeded random
weights, so a control image really changes the picture (what the tests need to see).

- `tiny-controlnet`             SD1 (`tiny`, `tiny-inpaint`, `random-mid` has its own size: not served)
- `tiny-controlnet-sdxl`        SDXL (`tiny-sdxl`)
- `tiny-controlnet-union-sdxl`  SDXL ControlNet Union: one model, a control mode per image
- `tiny-controlnet-sd3`         SD3 (`tiny-sd3`)
- `tiny-controlnet-flux`        Flux (`tiny-flux`)
"""

from __future__ import annotations

import torch

from ..protocol import BUILTIN_CONTROLNETS
from . import tiny

_SEED = 20250101
# The family each built-in ControlNet serves, and the tiny model it is derived from.
FAMILY = {
    "tiny-controlnet": ("sd1", "tiny"),
    "tiny-controlnet-sdxl": ("sdxl", "tiny-sdxl"),
    "tiny-controlnet-union-sdxl": ("sdxl", "tiny-sdxl"),
    "tiny-controlnet-sd3": ("sd3", "tiny-sd3"),
    "tiny-controlnet-flux": ("flux", "tiny-flux"),
}
assert set(FAMILY) == set(BUILTIN_CONTROLNETS)


def is_builtin(name: str) -> bool:
    return name in FAMILY


# The built-in ControlNet that fits each built-in model (random-mid has none: it is for timing).
SERVES = {"tiny": "tiny-controlnet", "tiny-inpaint": "tiny-controlnet", "tiny-sdxl": "tiny-controlnet-sdxl",
          "tiny-sd3": "tiny-controlnet-sd3", "tiny-flux": "tiny-controlnet-flux"}


def default_for(model_name: str) -> str | None:
    """The built-in ControlNet for a built-in model, if it has one."""
    return SERVES.get(model_name)


def build_controlnet(name: str):
    from diffusers import ControlNetModel, ControlNetUnionModel, FluxControlNetModel, SD3ControlNetModel

    if name not in FAMILY:
        raise ValueError(f"unknown built-in ControlNet {name!r}: one of {', '.join(FAMILY)}")
    base = tiny.build_pipeline(FAMILY[name][1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        if name == "tiny-controlnet-sd3":
            net = SD3ControlNetModel.from_transformer(base.transformer, num_layers=1, num_extra_conditioning_channels=0)
            outputs = list(net.controlnet_blocks)
        elif name == "tiny-controlnet-flux":
            config = base.transformer.config
            net = FluxControlNetModel.from_transformer(
                base.transformer, num_layers=1, num_single_layers=1, attention_head_dim=config.attention_head_dim,
                num_attention_heads=config.num_attention_heads)
            outputs = list(net.controlnet_blocks) + list(net.controlnet_single_blocks)
        elif "union" in name:
            # from_unet keeps the Union's own 320-wide control-type transformer: fit it to the UNet.
            width = base.unet.config.block_out_channels[0]
            config = {k: v for k, v in ControlNetUnionModel.from_unet(base.unet, load_weights_from_unet=False).config.items()
                      if not k.startswith("_")}  # `_use_default_values` would reset the fields below
            config.update(num_trans_channel=width, num_proj_channel=width, num_trans_head=2, num_control_type=8)
            net = ControlNetUnionModel.from_config(config)
            outputs = list(net.controlnet_down_blocks) + [net.controlnet_mid_block, net.spatial_ch_projs]
        else:
            net = ControlNetModel.from_unet(base.unet)
            outputs = list(net.controlnet_down_blocks) + [net.controlnet_mid_block]
        for layer in outputs:
            torch.nn.init.normal_(layer.weight, std=0.5)
            if layer.bias is not None:
                torch.nn.init.normal_(layer.bias, std=0.05)
    net.eval()
    return net
