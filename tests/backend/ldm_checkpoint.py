"""Test helper: write a diffusers SD 1.x pipeline as ONE original-layout (LDM/CompVis) checkpoint.

This is the inverse of diffusers' own LDM → diffusers conversion in
`diffusers/loaders/single_file_utils.py` (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint`), so a test can make a real single-file checkpoint offline and load
it back through `from_single_file`. Key prefixes in the file:

- UNet          `model.diffusion_model.*`    blocks renumbered into input/middle/output blocks
- VAE           `first_stage_model.*`        blocks renamed; mid attention weights as 1x1 convs
- text encoder  `cond_stage_model.transformer.text_model.*`  (CLIP ViT-L layout, names unchanged)

Only what SD 1.x-shaped models use is mapped; any key left unmapped raises, so a pipeline this
helper does not understand fails loudly instead of writing a partial checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

# Sub-layer names inside a UNet resnet: diffusers → LDM (`update_unet_resnet_ldm_to_diffusers`).
_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# Sub-layer names inside the VAE mid attention: diffusers → LDM (`update_vae_attentions_ldm_to_diffusers`).
_VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def save_ldm_checkpoint(pipe, path) -> None:
    """Save `pipe`'s UNet, VAE and CLIP text encoder into one `.safetensors` file in the SD 1.x layout."""
    save_file(ldm_state_dict(pipe), str(Path(path)))


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The whole checkpoint as one flat dict (also what a `.ckpt` holds under "state_dict")."""
    checkpoint: dict[str, torch.Tensor] = {}
    checkpoint.update(_prefixed(UNET_PREFIX, unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)))
    checkpoint.update(_prefixed(VAE_PREFIX, vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)))
    checkpoint.update(_prefixed(TEXT_PREFIX, text_encoder_to_ldm(pipe.text_encoder.state_dict())))
    # safetensors refuses tensors that share storage or are views: store plain copies.
    return {key: value.detach().cpu().contiguous().clone() for key, value in checkpoint.items()}


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def _rename(state: dict[str, torch.Tensor], blocks: list[tuple[str, str, dict[str, str]]]) -> dict[str, torch.Tensor]:
    """Map each key through the first (diffusers prefix, LDM prefix, sub-layer renames) that matches.

    Sub-layer renames replace whole dotted components after the prefix (`.norm1.` → `.in_layers.0.`).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old, new, parts in blocks:
            if key == old or key.startswith(old + "."):
                rest = key[len(old) :]
                for part_old, part_new in parts.items():
                    rest = rest.replace(f".{part_old}.", f".{part_new}.")
                out[new + rest] = value
                break
        else:
            raise ValueError(f"no LDM name for {key!r}: this helper maps SD 1.x-shaped models only")
    return out


def save_ldm_controlnet(net, path) -> None:
    """Save a diffusers ControlNetModel as one `.safetensors` file in the original ControlNet layout
    (lllyasviel's `cldm`: the UNet encoder's LDM names plus `zero_convs`, `middle_block_out` and
    `input_hint_block`), the inverse of diffusers' `convert_controlnet_checkpoint`."""
    state = net.state_dict()
    hint = [("controlnet_cond_embedding.conv_in", "input_hint_block.0", {})]
    hint += [(f"controlnet_cond_embedding.blocks.{k}", f"input_hint_block.{2 * (k + 1)}", {})
             for k in range(len(net.controlnet_cond_embedding.blocks))]
    hint.append(("controlnet_cond_embedding.conv_out", "input_hint_block.14", {}))
    zero = [(f"controlnet_down_blocks.{i}", f"zero_convs.{i}.0", {}) for i in range(len(net.controlnet_down_blocks))]
    zero.append(("controlnet_mid_block", "middle_block_out.0", {}))
    converted = _rename(state, hint + zero + _unet_blocks(state, net.config))
    save_file({key: value.detach().cpu().contiguous().clone() for key, value in converted.items()}, str(Path(path)))


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel keys → LDM `openaimodel.UNetModel` keys.

    LDM numbers the UNet as flat lists: input_blocks[0] is conv_in, then per down block
    `layers_per_block` (resnet, attention) pairs followed by a downsampler; middle_block is
    resnet, attention, resnet; output_blocks hold `layers_per_block + 1` (resnet, attention,
    upsampler) entries per up block, the upsampler at index 2 when the block has attentions, else 1.
    """
    return _rename(state, _unet_blocks(state, config))


def _unet_blocks(state: dict[str, torch.Tensor], config) -> list[tuple[str, str, dict[str, str]]]:
    per_block = config.layers_per_block
    count = len(config.block_out_channels)
    blocks: list[tuple[str, str, dict[str, str]]] = [
        ("conv_in", "input_blocks.0.0", {}),
        ("time_embedding.linear_1", "time_embed.0", {}),
        ("time_embedding.linear_2", "time_embed.2", {}),
        ("conv_norm_out", "out.0", {}),
        ("conv_out", "out.2", {}),
        ("mid_block.resnets.0", "middle_block.0", _UNET_RESNET_PARTS),
        ("mid_block.attentions.0", "middle_block.1", {}),
        ("mid_block.resnets.1", "middle_block.2", _UNET_RESNET_PARTS),
    ]
    for b in range(count):
        first = 1 + b * (per_block + 1)
        for j in range(per_block):
            blocks.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{first + j}.0", _UNET_RESNET_PARTS))
            blocks.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{first + j}.1", {}))
        blocks.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{first + per_block}.0.op", {}))
    for b in range(count):
        first = b * (per_block + 1)
        has_attention = any(key.startswith(f"up_blocks.{b}.attentions.") for key in state)
        for j in range(per_block + 1):
            blocks.append((f"up_blocks.{b}.resnets.{j}", f"output_blocks.{first + j}.0", _UNET_RESNET_PARTS))
            blocks.append((f"up_blocks.{b}.attentions.{j}", f"output_blocks.{first + j}.1", {}))
        upsampler = f"output_blocks.{first + per_block}.{2 if has_attention else 1}.conv"
        blocks.append((f"up_blocks.{b}.upsamplers.0.conv", upsampler, {}))
    return blocks


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """AutoencoderKL keys → LDM `AutoencoderKL` keys.

    LDM counts decoder up blocks from the lowest resolution *last* (`up.{n-1}` runs first), calls
    the resnets' 1x1 shortcut `nin_shortcut`, and its mid attention uses 1x1 convolutions, so
    those linear weights [C, C] are stored as [C, C, 1, 1] (diffusers squeezes them back).
    """
    count = len(config.down_block_types)
    resnet = {"conv_shortcut": "nin_shortcut"}
    blocks: list[tuple[str, str, dict[str, str]]] = []
    for side in ("encoder", "decoder"):
        blocks += [
            (f"{side}.conv_in", f"{side}.conv_in", {}),
            (f"{side}.conv_out", f"{side}.conv_out", {}),
            (f"{side}.conv_norm_out", f"{side}.norm_out", {}),
            (f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", resnet),
            (f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", resnet),
            (f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", _VAE_ATTENTION_PARTS),
        ]
    blocks += [("quant_conv", "quant_conv", {}), ("post_quant_conv", "post_quant_conv", {})]
    for i in range(count):
        blocks.append((f"encoder.down_blocks.{i}.resnets", f"encoder.down.{i}.block", resnet))
        blocks.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", {}))
        level = count - 1 - i
        blocks.append((f"decoder.up_blocks.{i}.resnets", f"decoder.up.{level}.block", resnet))
        blocks.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv", {}))
    out = _rename(state, blocks)
    conv_weights = (".mid.attn_1.q.weight", ".mid.attn_1.k.weight", ".mid.attn_1.v.weight", ".mid.attn_1.proj_out.weight")
    return {key: value[:, :, None, None] if key.endswith(conv_weights) else value for key, value in out.items()}


def text_encoder_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys, without any `text_model.` level (TEXT_PREFIX adds it back): transformers
    ≥ 5.6 flattened CLIPTextModel, older versions still nest it under `text_model`."""
    return {key.removeprefix("text_model."): value for key, value in state.items()}
