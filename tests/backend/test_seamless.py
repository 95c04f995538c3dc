"""Seamless tiling measured on small real diffusers models: periodicity where asked, nowhere else,
exact restore, LoRA layers, the VAE encoder, and tiled decoding."""

import peft
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from latentbridge.engine.seamless import _axis_tiles, decode_latents, set_seamless
from latentbridge.protocol import Seamless

SCALING = 0.18215


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=SCALING,
    )
    return model.eval()


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return model.eval()


@pytest.fixture(autouse=True)
def _restore(vae, unet):
    yield
    set_seamless([vae, unet], Seamless.none)


def _decode(vae, z):
    with torch.no_grad():
        return vae.decode(z).sample


def _encode(vae, img):
    with torch.no_grad():
        return vae.encode(img).latent_dist.mean


def _unet(unet, z):
    with torch.no_grad():
        ctx = torch.ones(z.shape[0], 3, 32) * 0.1
        return unet(z, 500, encoder_hidden_states=ctx).sample


def _equivariance_error(fn, x, shift_in, shift_out, dim):
    """max |fn(roll(x)) - roll(fn(x))| relative to the output's scale."""
    y = fn(x)
    y_shifted = fn(torch.roll(x, shift_in, dims=dim))
    return ((y_shifted - torch.roll(y, shift_out, dims=dim)).abs().max() / y.abs().max()).item()


def test_vae_decoder_periodic_on_requested_axis_only(vae):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    fn = lambda t: _decode(vae, t)  # noqa: E731
    # Unpatched: a shifted latent does not decode to a shifted image (zero padding at the edges).
    assert _equivariance_error(fn, z, 3, 24, -1) > 1e-2
    set_seamless([vae], Seamless.x)
    assert _equivariance_error(fn, z, 3, 24, -1) < 1e-5  # x wraps
    assert _equivariance_error(fn, z, 3, 24, -2) > 1e-2  # y does not
    set_seamless([vae], Seamless.xy)
    assert _equivariance_error(fn, z, 3, 24, -2) < 1e-5


def test_vae_encoder_wraps_too(vae):
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    fn = lambda t: _encode(vae, t)  # noqa: E731
    assert _equivariance_error(fn, img, 16, 2, -1) > 1e-2
    set_seamless([vae], Seamless.y)
    assert _equivariance_error(fn, img, 16, 2, -2) < 1e-5
    assert _equivariance_error(fn, img, 16, 2, -1) > 1e-2
    # The explicitly padding downsamplers were switched to the conv's own (wrapping) pad...
    downs = [m for m in vae.encoder.modules() if type(m).__name__ == "Downsample2D"]
    assert downs and all(d.padding == 1 for d in downs)
    set_seamless([vae], Seamless.none)
    # ...and back.
    assert all(d.padding == 0 for d in downs)


def test_unet_periodic_on_requested_axis_only(unet):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    fn = lambda t: _unet(unet, t)  # noqa: E731
    assert _equivariance_error(fn, z, 2, 2, -1) > 1e-2
    set_seamless([unet], Seamless.x)
    assert _equivariance_error(fn, z, 2, 2, -1) < 1e-4
    assert _equivariance_error(fn, z, 2, 2, -2) > 1e-2
    set_seamless([unet], Seamless.y)
    assert _equivariance_error(fn, z, 2, 2, -2) < 1e-4
    assert _equivariance_error(fn, z, 2, 2, -1) > 1e-2


def test_restore_is_bit_exact_and_idempotent(vae, unet):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    before = (_decode(vae, z), _encode(vae, img), _unet(unet, z))

    set_seamless([vae, unet], Seamless.xy)
    once = (_decode(vae, z), _encode(vae, img), _unet(unet, z))
    set_seamless([vae, unet], Seamless.xy)
    twice = (_decode(vae, z), _encode(vae, img), _unet(unet, z))
    assert all(torch.equal(a, b) for a, b in zip(once, twice))
    assert not torch.equal(once[0], before[0])

    # Switching axes without a restore in between acts as if only the last call happened.
    set_seamless([vae, unet], Seamless.x)
    switched = _decode(vae, z)
    set_seamless([vae, unet], Seamless.none)
    set_seamless([vae, unet], Seamless.x)
    assert torch.equal(switched, _decode(vae, z))

    set_seamless([vae, unet], Seamless.none)
    set_seamless([vae, unet], Seamless.none)
    after = (_decode(vae, z), _encode(vae, img), _unet(unet, z))
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    for m in list(vae.modules()) + list(unet.modules()):
        assert not any(k.startswith("_latentbridge") or k == "_conv_forward" for k in m.__dict__)


def test_lora_layers_added_later_are_wrapped():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).eval()
    set_seamless([unet], Seamless.x)
    # init_lora_weights=False: non-zero LoRA weights, so the LoRA convs really change the output.
    unet.add_adapter(peft.LoraConfig(r=4, target_modules=["conv1", "conv2"], init_lora_weights=False))
    fn = lambda t: _unet(unet, t)  # noqa: E731
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    lora_convs = [m for n, m in unet.named_modules() if n.endswith("lora_A.default") and isinstance(m, torch.nn.Conv2d)]
    assert lora_convs and all("_conv_forward" not in m.__dict__ for m in lora_convs)
    assert _equivariance_error(fn, z, 2, 2, -1) > 1e-3  # the new LoRA convs pad with zeros
    set_seamless([unet], Seamless.x)
    assert all("_conv_forward" in m.__dict__ for m in lora_convs)
    assert _equivariance_error(fn, z, 2, 2, -1) < 1e-4


def test_axis_tiles_cover_and_overlap():
    for n in (5, 16, 17, 40, 100):
        for wrap in (False, True):
            tiles = _axis_tiles(n, 16, 4, wrap)
            covered = set()
            for start, length in tiles:
                assert length <= max(n, 16)
                covered.update(i % n for i in range(start, start + length))
                if not wrap:
                    assert 0 <= start and start + length <= n
            assert covered == set(range(n))
            if len(tiles) > 1:
                starts = [s for s, _ in tiles] + ([tiles[0][0] + n] if wrap else [])
                gaps = [b - a for a, b in zip(starts, starts[1:])]
                assert max(gaps) <= 16 - 4  # neighbours overlap by at least `overlap`


def test_decode_latents_scaling_and_range(vae):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    out = decode_latents(vae, z, Seamless.none, tile=False)
    assert torch.allclose(out, _decode(vae, z / SCALING).clamp(-1, 1))
    assert out.shape == (1, 3, 64, 64) and out.min() >= -1 and out.max() <= 1


def test_tiled_decode_close_to_untiled(vae):
    z = torch.randn(1, 4, 24, 20, generator=torch.Generator().manual_seed(8))
    full = decode_latents(vae, z, Seamless.none, tile=False)

    def error(tile_latent, overlap):
        tiled = decode_latents(vae, z, Seamless.none, tile=True, tile_latent=tile_latent, overlap=overlap)
        assert tiled.shape == full.shape
        return ((tiled - full).abs().mean() / full.abs().mean()).item()

    # A random VAE's GroupNorm statistics differ per tile, so "close", not equal; blending the
    # overlaps must beat hard tile edges.
    assert error(16, 6) < 0.12
    assert error(12, 4) < error(12, 0)


def test_tiled_decode_of_wrapped_latent_stays_periodic(vae):
    z = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(9))
    set_seamless([vae], Seamless.x)
    # 24 latents, tiles of 10 overlapping by >= 4: four tiles starting every 6 latents around the
    # circle. Shifting by 6 maps the layout onto itself, so a tiling without a seam on x is
    # exactly shift-equivariant there; a layout with edges is not.
    def decode(seamless, t):
        return decode_latents(vae, t, seamless, tile=True, tile_latent=10, overlap=4)

    assert _equivariance_error(lambda t: decode(Seamless.x, t), z, 6, 48, -1) < 1e-5
    assert _equivariance_error(lambda t: decode(Seamless.none, t), z, 6, 48, -1) > 1e-2
    assert _equivariance_error(lambda t: decode(Seamless.x, t), z, 4, 32, -2) > 1e-2  # y not asked
    exact = decode_latents(vae, z, Seamless.x, tile=False)  # exactly periodic on x
    tiled = decode(Seamless.x, z)
    assert (tiled - exact).abs().mean() / exact.abs().mean() < 0.2
