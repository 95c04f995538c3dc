"""SD3 and Flux (flow-matching transformer families) through `Engine.generate`, on the built-in
tiny-sd3 / tiny-flux models: every mode the family table claims, seeds, samplers, previews,
guidance, LoRA, and typed refusals for what these families cannot do (seamless, Flux negatives)."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from engine_helpers import box_mask, gradient_image, make_engine, pixels, small_request
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from latentbridge import images
from latentbridge.engine import models, tiny
from latentbridge.engine.generate import _CleanLatentTap, _feed_generators
from latentbridge.engine.preview import FLUX_FACTORS, SD3_FACTORS, LatentPreviewer
from latentbridge.engine.samplers import FLOW_SAMPLERS, family_samplers
from latentbridge.protocol import ErrorCode, Mode, Sampler, Seamless, Unsupported

FAMILIES = {"tiny-sd3": "sd3", "tiny-flux": "flux"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def flow_engine(request):
    return make_engine(request.param)


@pytest.fixture(scope="module")
def flux_engine():
    return make_engine("tiny-flux")


@pytest.fixture(scope="module")
def sd3_engine():
    return make_engine("tiny-sd3")


def flow_request(**fields):
    values = dict(steps=2)
    values.update(fields)
    return small_request(**values)


# ------------------------------------------------------------------ models


def test_family_is_detected_and_every_mode_is_claimed(flow_engine):
    family = FAMILIES[flow_engine.status.name]
    assert flow_engine.status.family == family
    assert models.family_of(flow_engine.model.base) == family
    assert flow_engine.model.denoiser() is flow_engine.model.base.transformer
    assert flow_engine.model.base.vae.config.latent_channels == 16
    assert models.FAMILY_MODES[family] == set(Mode)
    assert family not in models.SEAMLESS_FAMILIES


def test_a_saved_flow_model_loads_from_its_folder_with_its_family_and_the_same_image(flow_engine, tmp_path):
    # Offline round trip, T5 tokenizer included; the family comes from the pipeline loaded from disk.
    preset = flow_engine.status.name
    tiny.build_pipeline(preset).save_pretrained(tmp_path / preset)
    folder_engine = make_engine(str(tmp_path / preset))
    assert folder_engine.status.family == FAMILIES[preset]
    request = flow_request()
    assert np.array_equal(pixels(folder_engine.generate(request).images[0]), pixels(flow_engine.generate(request).images[0]))


@pytest.mark.parametrize("preset", list(FAMILIES))
def test_tiny_flow_models_build_the_same_weights_every_time(preset):
    first, second = tiny.build_pipeline(preset), tiny.build_pipeline(preset)
    for name in ("transformer", "vae", "text_encoder"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ modes


@pytest.mark.parametrize("width, height", [(64, 64), (72, 64), (64, 88)])
def test_txt2img_gives_the_requested_size(flow_engine, width, height):
    # 72 and 88 are not multiples of 16 (what SD3's 2x2 patches and Flux's packing need).
    result = flow_engine.generate(flow_request(width=width, height=height))
    assert result.images[0].size == (width, height) and result.images[0].mode == "RGB"
    assert pixels(result.images[0]).std() > 1


@pytest.mark.parametrize("sampler", ["euler", "euler_a"])
def test_same_seed_is_bit_identical_and_another_seed_differs(flow_engine, sampler):
    request = flow_request(sampler=sampler)
    first = pixels(flow_engine.generate(request).images[0])
    torch.manual_seed(12345)  # the global RNG must play no part (euler_a draws noise every step)
    second = pixels(flow_engine.generate(request).images[0])
    other = pixels(flow_engine.generate(request.model_copy(update={"seed": 8})).images[0])
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_euler_a_is_the_stochastic_sampler(flow_engine):
    euler = pixels(flow_engine.generate(flow_request(sampler="euler", steps=3)).images[0])
    ancestral = pixels(flow_engine.generate(flow_request(sampler="euler_a", steps=3)).images[0])
    assert not np.array_equal(euler, ancestral)


def test_batch_images_regenerate_from_their_own_seed(flow_engine):
    result = flow_engine.generate(flow_request(batch_size=2, seed=40))
    assert result.seeds == [40, 41]
    alone = flow_engine.generate(flow_request(seed=41)).images[0]
    assert np.array_equal(pixels(result.images[1]), pixels(alone))


def test_img2img_gives_the_size_and_strength_matters(flow_engine):
    init = gradient_image(100, 80)
    light = flow_engine.generate(flow_request(mode="img2img", strength=0.3, steps=4), init_image=init).images[0]
    heavy = flow_engine.generate(flow_request(mode="img2img", strength=1.0, steps=4), init_image=init).images[0]
    assert light.size == heavy.size == (64, 64)
    assert not np.array_equal(pixels(light), pixels(heavy))


@pytest.mark.parametrize("preset, strength", [("tiny-sd3", 0.0), ("tiny-flux", 0.0), ("tiny", 0.4), ("tiny", 0.0)])
def test_a_strength_that_would_leave_no_step_runs_one_step_as_a1111_does(preset, strength):
    # tiny (UNet): int(2 * 0.4) = 0 steps; SD3/Flux: strength 0 skips every step. A1111 runs at
    # least one step (the least noisy one) however low the denoising strength: so do we.
    engine = make_engine(preset)
    steps: list[tuple[int, int]] = []
    request = flow_request(mode="img2img", strength=strength)
    out = engine.generate(request, init_image=gradient_image(), on_step=lambda u: steps.append((u.step, u.total)))
    assert steps == [(1, 1)] and out.images[0].size == (64, 64)
    assert out.request.strength == strength  # the request is kept as sent: the same rule regenerates it
    again = engine.generate(request, init_image=gradient_image()).images[0]
    assert np.array_equal(pixels(again), pixels(out.images[0]))


@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_keeps_every_pixel_outside_the_mask(flow_engine, only_masked):
    init, mask = gradient_image(), box_mask(box=(24, 20, 40, 36))
    request = flow_request(mode="inpaint", strength=1.0, mask={"blur": 2, "only_masked": only_masked, "padding": 8})
    out = flow_engine.generate(request, init_image=init, mask=mask).images[0]
    assert out.size == (64, 64)
    keep = np.asarray(images.prepare_mask(mask, init.size, blur=2, invert=False)) == 0
    assert np.array_equal(pixels(out)[keep], pixels(init)[keep])
    assert np.abs(pixels(out)[~keep] - pixels(init)[~keep]).mean() > 5  # the masked area was repainted


@pytest.mark.parametrize("extent", [{"right": 24}, {"left": 8, "top": 16, "bottom": 5}])
def test_outpaint_extends_and_keeps_the_original(flow_engine, extent):
    init = gradient_image()
    out = flow_engine.generate(flow_request(mode="outpaint", outpaint=extent, strength=1.0), init_image=init).images[0]
    left, top = extent.get("left", 0), extent.get("top", 0)
    assert out.size == (64 + left + extent.get("right", 0), 64 + top + extent.get("bottom", 0))
    assert np.array_equal(pixels(out)[top : top + 64, left : left + 64], pixels(init))
    new_area = np.ones(out.size[::-1], bool)
    new_area[top : top + 64, left : left + 64] = False
    assert pixels(out)[new_area].std() > 1


def test_tiled_vae_decode_handles_16_channel_latents(sd3_engine, monkeypatch):
    # Tiles are native-size (64 px for tiny-sd3; Flux's native 1024 px is too big to test here,
    # and its latents reach the same decoder once unpacked).
    monkeypatch.setattr(sd3_engine.settings, "vae_tiling", "on")
    vae = sd3_engine.model.base.vae
    shapes = []
    original = vae.decode
    monkeypatch.setattr(vae, "decode", lambda z, *a, **k: (shapes.append(tuple(z.shape[1:])), original(z, *a, **k))[1])
    out = sd3_engine.generate(flow_request(width=128, height=96)).images[0]
    assert out.size == (128, 96)
    assert len(shapes) > 1 and all(c == 16 and h < 12 and w < 16 for c, h, w in shapes)


# ------------------------------------------------------------------ guidance and prompts


def test_guidance_changes_the_image(flow_engine):
    # SD3: classifier-free guidance; Flux: the distilled guidance embedding.
    low = pixels(flow_engine.generate(flow_request(guidance=1.0)).images[0])
    high = pixels(flow_engine.generate(flow_request(guidance=6.0)).images[0])
    assert not np.array_equal(low, high)


def test_sd3_uses_the_negative_prompt(sd3_engine):
    plain = pixels(sd3_engine.generate(flow_request(guidance=5.0)).images[0])
    negative = pixels(sd3_engine.generate(flow_request(guidance=5.0, negative_prompt="blurry")).images[0])
    assert not np.array_equal(plain, negative)


def test_flux_refuses_a_negative_prompt_with_a_typed_error(flux_engine):
    with pytest.raises(Unsupported) as info:
        flux_engine.generate(flow_request(negative_prompt="blurry"))
    assert info.value.field == "negative_prompt" and info.value.code is ErrorCode.unsupported


# ------------------------------------------------------------------ samplers


def test_flow_families_list_only_the_flow_samplers():
    assert family_samplers("sd3") == family_samplers("flux") == [Sampler.euler, Sampler.euler_a]
    assert Sampler.dpmpp_2m in family_samplers("sd1")


@pytest.mark.parametrize("sampler", [s for s in Sampler if s not in FLOW_SAMPLERS])
def test_other_samplers_are_a_typed_unsupported_naming_the_sampler(flow_engine, sampler):
    with pytest.raises(Unsupported) as info:
        flow_engine.generate(flow_request(sampler=sampler))
    assert info.value.field == "sampler" and sampler.value in info.value.message


def test_flow_clean_latent_tap_and_seeded_stochastic_step():
    scheduler = FlowMatchEulerDiscreteScheduler.from_config({"shift": 3.0}, stochastic_sampling=True)
    scheduler.set_timesteps(2)
    _feed_generators(scheduler, [torch.Generator().manual_seed(5)])
    tap = _CleanLatentTap(scheduler)
    sample, velocity = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    sigma, next_sigma = scheduler.sigmas[0], scheduler.sigmas[1]
    prev = scheduler.step(velocity, scheduler.timesteps[0], sample).prev_sample
    clean = sample - sigma * velocity
    assert torch.allclose(tap.latest, clean)
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(prev, (1 - next_sigma) * clean + next_sigma * noise)


# ------------------------------------------------------------------ previews


def test_previews_arrive_every_step_at_the_capped_size(flow_engine):
    sizes = []
    request = flow_request(width=96, height=64, steps=3, preview={"max_size": 48})
    flow_engine.generate(request, on_step=lambda update: sizes.append((update.step, update.total, update.preview().size)))
    assert sizes == [(1, 3, (48, 32)), (2, 3, (48, 32)), (3, 3, (48, 32))]


def test_previews_keep_the_aspect_when_the_work_size_is_rounded_up(flow_engine):
    sizes = []
    flow_engine.generate(flow_request(width=72, height=64), on_step=lambda update: sizes.append(update.preview().size))
    assert sizes == [(72, 64), (72, 64)]


@pytest.mark.parametrize("family, factors", [("sd3", SD3_FACTORS), ("flux", FLUX_FACTORS)])
def test_latent2rgb_uses_the_16_channel_factors(family, factors):
    latents = torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(0)) * 0.5
    image = LatentPreviewer(family).to_image(latents, 256)
    assert image.size == (48, 64)
    previewer = LatentPreviewer(family)
    rgb = previewer._latent2rgb(latents)
    expected = torch.einsum("chw,cr->hwr", latents[0], torch.tensor(factors)) + previewer._bias
    assert torch.allclose(rgb, expected, atol=1e-6)
    assert not torch.allclose(rgb, LatentPreviewer("unknown")._latent2rgb(latents))


def test_last_vae_preview_is_the_final_image(flow_engine, monkeypatch):
    # The last flow-matching Euler step lands on sigma 0, where the predicted clean latent is the
    # final latent: a full-VAE preview of it must be the final image. A non-square size checks
    # that Flux's packed latents are unpacked the right way round.
    monkeypatch.setattr(flow_engine.settings, "vae_tiling", "off")  # the preview decodes in one piece too
    previews = []
    request = flow_request(width=96, height=64, steps=3, preview={"decoder": "vae", "max_size": 128})
    final = flow_engine.generate(request, on_step=lambda update: previews.append(update.preview())).images[0]
    assert previews[-1].size == final.size == (96, 64)
    assert np.abs(pixels(previews[-1]) - pixels(final)).max() <= 1
    assert not np.array_equal(pixels(previews[0]), pixels(final))


def _tiny_taesd(latent_channels: int, **config):
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return AutoencoderTiny(
            encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4, num_encoder_blocks=(1,) * 4,
            num_decoder_blocks=(1,) * 4, latent_channels=latent_channels, **config,
        ).eval()


def test_taesd_previews_undo_the_taesds_own_scaling_and_shift():
    # TAESD3 / TAEF1 decode the VAE's raw latents: the pipeline's scaled latents / scale + shift.
    taesd = _tiny_taesd(16, scaling_factor=1.5305, shift_factor=0.0609)
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    image = LatentPreviewer("sd3", "taesd", taesd=taesd).to_image(latents, 256)
    with torch.no_grad():
        expected = taesd.decode(latents / 1.5305 + 0.0609).sample[0].clamp(-1, 1)
    expected = ((expected + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert image.size == (64, 64)
    assert np.array_equal(np.asarray(image), expected)


@pytest.mark.parametrize("channels, decoder_used", [(16, "taesd"), (4, "latent2rgb")])
def test_engine_taesd_previews_and_a_taesd_that_does_not_fit_falls_back(tmp_path, channels, decoder_used):
    _tiny_taesd(channels, scaling_factor=1.5305, shift_factor=0.0609).save_pretrained(tmp_path / "taesd")
    engine = make_engine("tiny-sd3", taesd=str(tmp_path / "taesd"))
    taesd_previews, rgb_previews = [], []
    request = flow_request(preview={"decoder": "taesd"})
    engine.generate(request, on_step=lambda update: taesd_previews.append(pixels(update.preview())))
    engine.generate(flow_request(preview={"decoder": "latent2rgb"}),
                    on_step=lambda update: rgb_previews.append(pixels(update.preview())))
    assert [p.shape for p in taesd_previews] == [(64, 64, 3)] * 2
    assert np.array_equal(taesd_previews[-1], rgb_previews[-1]) == (decoder_used == "latent2rgb")


def test_previews_do_not_change_the_image(flow_engine):
    request = flow_request(sampler="euler_a")
    plain = pixels(flow_engine.generate(request).images[0])
    watched = pixels(flow_engine.generate(request, on_step=lambda update: update.preview()).images[0])
    assert np.array_equal(plain, watched)


# ------------------------------------------------------------------ seamless and LoRA


@pytest.mark.parametrize("seamless", [Seamless.x, Seamless.y, Seamless.xy])
def test_seamless_is_a_typed_unsupported_naming_seamless(flow_engine, seamless):
    with pytest.raises(Unsupported) as info:
        flow_engine.generate(flow_request(seamless=seamless))
    assert info.value.field == "seamless" and info.value.code is ErrorCode.unsupported


def _transformer_lora(preset: str, folder) -> str:
    """A random LoRA for the preset's transformer, saved the way diffusers' trainers save one."""
    pipe = tiny.build_pipeline(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        pipe.transformer.add_adapter(
            LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
        )
    type(pipe).save_lora_weights(str(folder), transformer_lora_layers=get_peft_model_state_dict(pipe.transformer), weight_name="style.safetensors")
    return str(folder / "style.safetensors")


def test_lora_applies_to_the_transformer_and_is_removed_afterwards(flow_engine, tmp_path):
    path = _transformer_lora(flow_engine.status.name, tmp_path)
    base = pixels(flow_engine.generate(flow_request()).images[0])
    styled = pixels(flow_engine.generate(flow_request(loras=[{"name": path, "weight": 1.0}])).images[0])
    muted = pixels(flow_engine.generate(flow_request(loras=[{"name": path, "weight": 0.0}])).images[0])
    after = pixels(flow_engine.generate(flow_request()).images[0])
    assert np.abs(styled - base).mean() > 0.5
    assert np.array_equal(muted, base)
    assert np.array_equal(after, base)
