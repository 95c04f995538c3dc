"""Tiny LoRA files built in code (peft), for the engine's LoRA tests.

Each LoRA is trained on nothing: it is peft's random (non-zero) initialisation of attention
adapters on a separate copy of a built-in model's denoiser, scaled up so it visibly changes images.
The engine's live model is never touched.
"""

from pathlib import Path

import torch

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def save_tiny_lora(path: Path, preset: str = "tiny", *, seed: int = 0, scale: float = 3.0) -> Path:
    """Write a LoRA for the built-in `preset` UNet to `path` (a .safetensors file) and return it."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from latentbridge.engine import tiny

    unet = tiny.build_pipeline(preset).unet  # a fresh copy, same architecture as the engine's
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False))
    layers = {key: value * scale for key, value in get_peft_model_state_dict(unet).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(path.parent), unet_lora_layers=layers, weight_name=path.name, safe_serialization=True
    )
    return path


def has_lora_layers(module: torch.nn.Module) -> bool:
    """Does any peft/LoRA layer remain in `module`?"""
    return any("lora" in name for name, _ in module.named_modules()) or bool(getattr(module, "peft_config", None))
