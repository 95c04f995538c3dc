"""Built-in random ControlNets that fit the built-in tiny models, made in code with no download.

Each is derived from its family's tiny denoiser with diffusers' own `from_unet` /
`from_transformer`, so its shapes match the model exactly. A fresh ControlNet's zero layers (the
output "zero convolutions", and the last layer of the embedding the control image enters by)
start at zero, which would make it a no-op or blind to its image; here they get seeded random
weights, so the control image itself changes the picture (what the tests need to see: a black map
and a noise map give different images).

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
            _map_layer(net.pos_embed_input.proj)
        elif name == "tiny-controlnet-flux":
            config = base.transformer.config
            net = FluxControlNetModel.from_transformer(
                base.transformer, num_layers=1, num_single_layers=1, attention_head_dim=config.attention_head_dim,
                num_attention_heads=config.num_attention_heads)
            outputs = list(net.controlnet_blocks) + list(net.controlnet_single_blocks)
            _map_layer(net.controlnet_x_embedder)
        elif "union" in name:
            # from_unet keeps the Union's own 320-wide control-type transformer: fit it to the UNet.
            width = base.unet.config.block_out_channels[0]
            config = {k: v for k, v in ControlNetUnionModel.from_unet(base.unet, load_weights_from_unet=False).config.items()
                      if not k.startswith("_")}  # `_use_default_values` would reset the fields below
            config.update(num_trans_channel=width, num_proj_channel=width, num_trans_head=2, num_control_type=8)
            net = ControlNetUnionModel.from_config(config)
            outputs = list(net.controlnet_down_blocks) + [net.controlnet_mid_block, net.spatial_ch_projs]
            _map_embedding(net.controlnet_cond_embedding)
        else:
            net = ControlNetModel.from_unet(base.unet)
            outputs = list(net.controlnet_down_blocks) + [net.controlnet_mid_block]
            _map_embedding(net.controlnet_cond_embedding)
        for layer in outputs:
            torch.nn.init.normal_(layer.weight, std=0.5)
            if layer.bias is not None:
                torch.nn.init.normal_(layer.bias, std=0.05)
    net.eval()
    return net


def _map_layer(layer) -> None:
    """The transformer ControlNets' image embedding: one zero layer, given seeded random weights."""
    torch.nn.init.normal_(layer.weight, std=0.2)
    if layer.bias is not None:
        torch.nn.init.normal_(layer.bias, std=0.02)


def _map_embedding(embedding) -> None:
    """The UNet ControlNets' image embedding (eight small convolutions): with PyTorch's default
    initialisation the image's signal fades to nothing across them and the ControlNet is blind to
    its map. He initialisation keeps it, and the last layer is scaled to give features a few times
    the size of the latents' own, so the map shows in the picture; a black map embeds to zero, as
    with a trained ControlNet."""
    for layer in embedding.modules():
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            torch.nn.init.zeros_(layer.bias)
    torch.nn.init.normal_(embedding.conv_out.weight, std=4 * embedding.conv_out.weight[0].numel() ** -0.5)
