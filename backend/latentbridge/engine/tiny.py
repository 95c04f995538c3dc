"""Built-in random models, made in code with no download: for tests, smoke runs and benchmarks.

Their weights come from a fixed seed, so every process builds the same model and a request gives
the same image everywhere (on CPU). They produce noise, not pictures: they exercise the real
diffusers pipelines, schedulers, VAE and text encoders at a size the test suite can afford.

Presets (the `--model` names):
- `tiny`          SD1-style: UNet (32, 64) channels, 4-block VAE (scale factor 8), CLIP text 32 wide.
- `tiny-inpaint`  the same with a 9-channel UNet: a true ("dedicated") inpainting model.
- `tiny-sdxl`     SDXL-style: two text encoders (the second with a projection), text-time embeddings.
- `random-mid`    SD1-style with a UNet of (128, 256, 512) channels: heavy enough that per-step costs
                  (previews, event handling) show up in benchmarks the way they do on a real model.
- `tiny-sd3`      SD3-style: MMDiT transformer (2x2 patches), 16-channel VAE with shift_factor, two
                  CLIP encoders with projections + a T5 encoder, flow-matching Euler scheduler.
- `tiny-flux`     Flux-style: transformer over 2x2-packed 16-channel latents with guidance embedding
                  (like FLUX.1-dev), CLIP + T5 encoders, flow matching with resolution-dependent shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..protocol import BUILTIN_MODELS

PRESETS = BUILTIN_MODELS
_SEED = 20240607
_TEXT_POSITIONS = 77  # CLIP's context length; prompts are padded/truncated to it


@dataclass(frozen=True)
class _Shape:
    unet_channels: tuple[int, ...]
    text_width: int
    unet_in_channels: int = 4
    sdxl: bool = False
    sample_size: int = 8  # latent size the model is "native" at (x8 pixels)


_SHAPES = {
    "tiny": _Shape(unet_channels=(32, 64), text_width=32),
    "tiny-inpaint": _Shape(unet_channels=(32, 64), text_width=32, unet_in_channels=9),
    "tiny-sdxl": _Shape(unet_channels=(32, 64), text_width=32, sdxl=True),
    "random-mid": _Shape(unet_channels=(128, 256, 512), text_width=256, sample_size=32),
}


def is_builtin(name: str) -> bool:
    return name in PRESETS


def _byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (GPT-2's scheme):
    printable Latin-1 bytes stand for themselves, the rest map to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _tokenizer():
    """A CLIP BPE tokenizer over single bytes (no merges): every string encodes, offline."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for token in symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_TEXT_POSITIONS)


def _text_config(width: int, vocab_size: int, projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=width * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_TEXT_POSITIONS,
        projection_dim=width if projection else 512,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def _unet(shape: _Shape, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    n = len(shape.unet_channels)
    kwargs = dict(
        sample_size=shape.sample_size,
        in_channels=shape.unet_in_channels,
        out_channels=4,
        block_out_channels=shape.unet_channels,
        layers_per_block=1 if n > 2 else 2,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    if shape.sdxl:
        # SDXL conditions on the pooled text embedding plus 6 size/crop numbers ("text_time").
        kwargs.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + shape.text_width,
            use_linear_projection=True,
        )
    return UNet2DConditionModel(**kwargs)


def _vae(sdxl: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16),  # four blocks → downscale by 8, as in real SD
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025 if sdxl else 0.18215,
    )


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    # Stable Diffusion's training schedule.
    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
    )


def build_pipeline(preset: str = "tiny"):
    """A text-to-image pipeline (or an inpainting one for `tiny-inpaint`) with seeded random weights."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if preset in _FLOW_BUILDERS:
        return _FLOW_BUILDERS[preset]()
    if preset not in _SHAPES:
        raise ValueError(f"unknown built-in model {preset!r}: one of {', '.join(PRESETS)}")
    shape = _SHAPES[preset]
    # Building must not disturb the caller's global RNG, and must give the same weights each time.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        tokenizer = _tokenizer()
        vocab = len(tokenizer)
        text_encoder = CLIPTextModel(_text_config(shape.text_width, vocab, projection=False))
        if shape.sdxl:
            text_encoder_2 = CLIPTextModelWithProjection(_text_config(shape.text_width, vocab, projection=True))
            unet = _unet(shape, cross_attention_dim=shape.text_width * 2)
        else:
            unet = _unet(shape, cross_attention_dim=shape.text_width)
        vae = _vae(shape.sdxl)
    for module in (text_encoder, unet, vae):
        module.eval()
    if shape.sdxl:
        text_encoder_2.eval()
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=_tokenizer(),
            unet=unet,
            scheduler=_scheduler(),
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    cls = StableDiffusionInpaintPipeline if shape.unet_in_channels == 9 else StableDiffusionPipeline
    return cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# --------------------------------------------------------------------------------------------
# Flow-matching transformer families (SD3, Flux)

_T5_POSITIONS = 512  # longest T5 prompt the pipelines ask for (Flux: 512, SD3: 256)


def _t5_tokenizer():
    """A T5 (Unigram) tokenizer over single characters, built offline: every string encodes
    (characters outside printable ASCII become <unk>)."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for code in range(ord("!"), ord("~") + 1):
        vocab += [(chr(code), -5.0), ("\u2581" + chr(code), -4.0)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=_T5_POSITIONS)


def _t5_encoder(width: int, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=8,
        d_ff=width * 2,
        num_layers=2,
        num_heads=width // 8,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _flow_vae(scaling_factor: float, shift_factor: float):
    """A 16-channel VAE (scale factor 8) with the latent shift SD3 and Flux use."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _eval(*modules) -> None:
    for module in modules:
        module.eval()


def _build_sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    width = 32  # each CLIP encoder; SD3 concatenates the two (64) and pads them to T5's width
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        tokenizer = _tokenizer()
        t5_tokenizer = _t5_tokenizer()
        text_encoder = CLIPTextModelWithProjection(_text_config(width, len(tokenizer), projection=True))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(width, len(tokenizer), projection=True))
        text_encoder_3 = _t5_encoder(width * 2, len(t5_tokenizer))
        transformer = SD3Transformer2DModel(
            sample_size=8,  # native 64 px
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=width * 2,
            caption_projection_dim=32,
            pooled_projection_dim=width * 2,
            pos_embed_max_size=64,  # positions for up to 64x64 patches (1024 px)
        )
        vae = _flow_vae(scaling_factor=1.5305, shift_factor=0.0609)  # SD3's VAE constants
    _eval(text_encoder, text_encoder_2, text_encoder_3, transformer, vae)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer,
    )


def _build_flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    width = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        tokenizer = _tokenizer()
        t5_tokenizer = _t5_tokenizer()
        text_encoder = CLIPTextModel(_text_config(width, len(tokenizer), projection=False))
        text_encoder_2 = _t5_encoder(width, len(t5_tokenizer))
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16 * 4,  # 16 latent channels packed in 2x2 patches
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=width,
            pooled_projection_dim=width,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
        )
        vae = _flow_vae(scaling_factor=0.3611, shift_factor=0.1159)  # Flux's VAE constants
    _eval(text_encoder, text_encoder_2, transformer, vae)
    # FLUX.1's schedule: the shift grows with the image's token count.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
        base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
    )


_FLOW_BUILDERS = {"tiny-sd3": _build_sd3, "tiny-flux": _build_flux}


# --------------------------------------------------------------------------------------------
# A tiny TAESD (AutoencoderTiny) for tests: the real architecture, a few channels wide.

TINY_TAESD = "tiny-taesd"


def build_tiny_taesd(latent_channels: int = 4, shift_factor: float = 0.0, scaling_factor: float = 1.0):
    """A random `AutoencoderTiny` (8x down/up-scaling, as TAESD) for latents of `latent_channels`;
    SD3/Flux-style latents pass their `shift_factor` / `scaling_factor`, as TAESD3 / TAEF1 carry them."""
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED + latent_channels)
        taesd = AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=latent_channels,
            shift_factor=shift_factor,
            scaling_factor=scaling_factor,
        )
    return taesd.eval()
