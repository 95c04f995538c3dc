import numpy as np
import pytest
import torch

from latentbridge.engine.preview import (
    FLUX_BIAS,
    FLUX_FACTORS,
    SD1_FACTORS,
    SDXL_BIAS,
    SDXL_FACTORS,
    LatentPreviewer,
    unpack_flux_latents,
)
from latentbridge.protocol import Unsupported


def _constant_latent(vec, h=8, w=8, batch=1):
    return torch.tensor(vec, dtype=torch.float32).view(1, -1, 1, 1).expand(batch, -1, h, w).clone()


def _expected(vec, factors, bias=None):
    rgb = np.asarray(vec, dtype=np.float64) @ np.asarray(factors, dtype=np.float64)
    if bias is not None:
        rgb = rgb + np.asarray(bias)
    return np.round((np.clip(rgb, -1, 1) + 1) * 127.5)


@pytest.mark.parametrize("family", ["sd1", "sd2", "SD 1.5", "tiny"])
def test_sd1_factors_colour(family):
    vec = [0.5, -0.3, 0.8, -1.0]
    img = LatentPreviewer(family).to_image(_constant_latent(vec), 64)
    assert img.mode == "RGB" and img.size == (64, 64)
    assert np.abs(np.asarray(img, dtype=np.float64) - _expected(vec, SD1_FACTORS)).max() <= 1


def test_sdxl_factors_use_bias():
    zero = LatentPreviewer("sdxl").to_image(torch.zeros(1, 4, 8, 8), 64)
    assert np.abs(np.asarray(zero, dtype=np.float64)[0, 0] - _expected([0, 0, 0, 0], SDXL_FACTORS, SDXL_BIAS)).max() <= 1
    vec = [1.0, 0.5, -0.5, -1.0]
    img = LatentPreviewer("sdxl").to_image(_constant_latent(vec), 64)
    assert np.abs(np.asarray(img, dtype=np.float64) - _expected(vec, SDXL_FACTORS, SDXL_BIAS)).max() <= 1
    # A latent channel 0 saturates to white in SD1 and SDXL alike, clamped to 255.
    assert (np.asarray(LatentPreviewer("sdxl").to_image(_constant_latent([9, 0, 0, 0]), 16)) == 255).all()


def test_first_item_of_batch_and_spatial_layout():
    lat = torch.zeros(2, 4, 8, 16)
    lat[0, 0, :, :8] = 2.0  # left half bright in the first item
    lat[1] = 5.0
    img = np.asarray(LatentPreviewer("sd1").to_image(lat, 1024))
    assert img.shape == (64, 128, 3)  # latent x 8, below the cap
    assert img[:, :40].mean() > 200 and abs(img[:, 90:].mean() - 127.5) < 2


def test_size_cap_keeps_aspect():
    previewer = LatentPreviewer("sd1")
    assert previewer.to_image(torch.zeros(1, 4, 64, 96), 256).size == (256, 171)
    assert previewer.to_image(torch.zeros(1, 4, 128, 128), 100).size == (100, 100)
    assert previewer.to_image(torch.zeros(1, 4, 8, 8), 256).size == (64, 64)


def test_flux_packed_latents():
    # NCHW latent (1, 16, 4, 6) packed the way Flux pipelines do: 2x2 patches in the last dim.
    nchw = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    packed = nchw.view(1, 16, 2, 2, 3, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 6, 64)
    assert torch.equal(unpack_flux_latents(packed, height=32, width=48), nchw)
    with pytest.raises(Unsupported):
        unpack_flux_latents(packed)  # 6 patches: not square, size needed
    vec = [0.3] * 8 + [-0.2] * 8
    square = _constant_latent(vec, 4, 4).view(1, 16, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 4, 64)
    img = LatentPreviewer("flux").to_image(square, 64)
    assert img.size == (32, 32)
    assert np.abs(np.asarray(img, dtype=np.float64) - _expected(vec, FLUX_FACTORS, FLUX_BIAS)).max() <= 1
    img = LatentPreviewer("flux", image_size=(48, 32)).to_image(packed, 64)
    assert img.size == (48, 32)


def test_unknown_family_falls_back_to_normalised_channels():
    lat = torch.zeros(1, 8, 4, 4)
    lat[0, :3, :, :2] = 1.0
    img = np.asarray(LatentPreviewer("mystery").to_image(lat, 32))
    assert img[:, :8].min() >= 250 and img[:, 24:].max() <= 5


def test_vae_and_taesd_decoders():
    import diffusers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, layers_per_block=1,
    ).eval()
    img = LatentPreviewer("sd1", "vae", vae=vae).to_image(torch.randn(1, 4, 16, 16), 24)
    assert img.size == (24, 24)
    taesd = diffusers.AutoencoderTiny(
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1), latent_channels=4,
    ).eval()
    img = LatentPreviewer("sd1", "taesd", taesd=taesd).to_image(torch.randn(1, 4, 8, 8), 256)
    assert img.mode == "RGB" and max(img.size) <= 256
    assert LatentPreviewer("sd1", "none").to_image(torch.zeros(1, 4, 8, 8), 64) is None
    with pytest.raises(Unsupported):
        LatentPreviewer("sd1", "taesd")
    with pytest.raises(Unsupported):
        LatentPreviewer("sd1", "vae")
    with pytest.raises(Unsupported):
        LatentPreviewer("sd1", "magic")
