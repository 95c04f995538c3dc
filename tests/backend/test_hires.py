"""The hires fix: a second, upscaled pass that keeps the composition; seamless stays seamless."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import make_engine, pixels, small_request
from PIL import Image

from latentbridge.engine.hires import LATENT_MODES, upscale_latents
from latentbridge.protocol import LATENT_UPSCALERS, GenerationRequest, HiresOptions, InvalidRequest, Seamless


def hires_request(**hires):
    values = {"scale": 2.0, "upscaler": "latent", "steps": 2, "strength": 0.5}
    values.update(hires)
    return small_request(sampler="euler", steps=3, guidance=1.0, hires=values)


def test_final_sizes_follow_a1111s_rules():
    assert HiresOptions(scale=1.5).final_size(512, 768) == (768, 1152)
    assert HiresOptions(scale=1.3).final_size(512, 512) == (664, 664)  # int(665.6) rounded down to 8
    assert HiresOptions(width=1024).final_size(512, 768) == (1024, 1536)  # height from the aspect
    assert HiresOptions(height=1024).final_size(512, 768) == (680, 1024)
    # Both given: upscale to cover the box, then centre-crop to it.
    options = HiresOptions(width=1000, height=1000)
    assert options.target_size(512, 768) == (1000, 1500) and options.final_size(512, 768) == (1000, 1000)
    assert GenerationRequest(width=64, height=64, hires={"scale": 2}).output_size() == (128, 128)
    with pytest.raises(ValueError, match="txt2img"):
        GenerationRequest(mode="img2img", hires={})
    with pytest.raises(ValueError, match="64..4096"):
        GenerationRequest(width=4096, height=4096, hires={"scale": 2})


@pytest.mark.parametrize("upscaler", ["latent", "latent-nearest-exact", "lanczos", "nearest"])
def test_both_passes_run_to_the_final_size_reproducibly_with_progress_over_both(engine, upscaler):
    updates = []
    request = hires_request(upscaler=upscaler, scale=1.5)
    result = engine.generate(request, on_step=lambda u: updates.append((u.step, u.total)))
    assert result.images[0].size == (96, 96) and result.request.hires.upscaler == upscaler
    # 3 first-pass steps, then int(2 * 0.5) = 1 step of the second pass: one progress over both.
    assert updates == [(1, 4), (2, 4), (3, 4), (4, 4)]
    again = engine.generate(request).images[0]
    assert np.array_equal(pixels(again), pixels(result.images[0]))


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_the_second_pass_keeps_the_first_pass_composition(engine, upscaler):
    """The large image's coarse layout is the base image's (random weights blur this: the tiny VAE
    does not reconstruct what it encodes), far closer to it than another seed's base is."""
    base = engine.generate(small_request(sampler="euler", steps=3, guidance=1.0)).images[0]
    large = engine.generate(hires_request(strength=0.3, upscaler=upscaler)).images[0]
    other_seed = engine.generate(small_request(sampler="euler", steps=3, guidance=1.0, seed=99)).images[0]

    def layout(image):
        return pixels(image.resize((8, 8), Image.Resampling.BOX))

    assert np.abs(layout(large) - layout(base)).mean() < 0.8 * np.abs(layout(other_seed) - layout(base)).mean()


def test_second_pass_settings_are_its_own(engine):
    same = pixels(engine.generate(hires_request(steps=4, strength=1.0)).images[0])
    other_prompt = pixels(engine.generate(hires_request(steps=4, strength=1.0, prompt="something else")).images[0])
    other_sampler = pixels(engine.generate(hires_request(steps=4, strength=1.0, sampler="dpmpp_2m",
                                                         schedule="karras")).images[0])
    assert not np.array_equal(same, other_prompt) and not np.array_equal(same, other_sampler)


def test_a_cover_and_crop_target_and_an_unknown_upscaler(engine):
    out = engine.generate(hires_request(width=96, height=80, upscaler="latent-bicubic")).images[0]
    assert out.size == (96, 80)
    with pytest.raises(InvalidRequest) as info:
        engine.generate(hires_request(upscaler="4x-NoSuchModel"))
    assert info.value.field == "hires.upscaler"


def test_latent_upscaling_modes_and_wrapping():
    assert set(LATENT_MODES) == set(LATENT_UPSCALERS)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for mode in LATENT_MODES:
        assert upscale_latents(latents, (128, 96), mode).shape == (1, 4, 12, 16)
    # Wrapped: upscaling commutes with a roll of whole latents (the opposite edge is the neighbour).
    up = upscale_latents(latents, (128, 128), "latent", Seamless.xy)
    rolled = upscale_latents(latents.roll(3, dims=3), (128, 128), "latent", Seamless.xy)
    assert torch.allclose(rolled, up.roll(6, dims=3), atol=1e-5)
    plain = upscale_latents(latents.roll(3, dims=3), (128, 128), "latent")
    assert not torch.allclose(plain, up.roll(6, dims=3), atol=1e-3)


def _rolled_noise(monkeypatch, first: int, second: int):
    """Roll the first pass's initial noise by `first` latents along x, and the second pass's (and
    the VAE encoder's sampling noise, which the image path draws) by `second`."""
    import diffusers.models.autoencoders.vae as vae
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion as t2i
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as i2i

    for module, shift in ((t2i, first), (i2i, second), (vae, second)):
        original = module.randn_tensor
        monkeypatch.setattr(module, "randn_tensor", lambda *a, _o=original, _s=shift, **k: _o(*a, **k).roll(_s, dims=3))


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_a_seamless_hires_image_is_still_seamless(monkeypatch, upscaler):
    """End to end, as the seamless tests do for one pass: with every step wrapping, rolling the
    initial noise by whole latents rolls the final image by the same amount (x8 px, x2 scale),
    which only holds when both passes, the upscale and the decode wrap on that axis. (Shifts and
    widths are multiples of the wrapped tile spacing, 6 latents, of the tiled decodes: 96 -> 192 px.)"""
    engine = make_engine("tiny")
    request = hires_request(upscaler=upscaler).model_copy(update={"seamless": Seamless.x, "width": 96})
    base = pixels(engine.generate(request).images[0])
    _rolled_noise(monkeypatch, 6, 12)
    shifted = pixels(engine.generate(request).images[0])
    rolled = np.roll(base, 12 * 8, axis=1)
    assert np.abs(shifted - rolled).max() <= 2 and np.abs(shifted - rolled).mean() < 0.05
    if upscaler == "latent":  # the check has teeth: without wrapping the same roll does not hold
        plain = request.model_copy(update={"seamless": Seamless.none})
        monkeypatch.undo()
        unrolled = pixels(engine.generate(plain).images[0])
        _rolled_noise(monkeypatch, 6, 12)
        assert np.abs(pixels(engine.generate(plain).images[0]) - np.roll(unrolled, 96, axis=1)).mean() > 5
