"""Every mode on the tiny models: sizes, seeds, determinism, masks, outpainting, seamless,
large outputs, samplers, previews, cancellation and out-of-memory handling."""

import threading

import numpy as np
import pytest
import torch
from engine_helpers import box_mask, gradient_image, pixels, small_request
from PIL import Image

from latentbridge import images
from latentbridge.engine import StepUpdate
from latentbridge.protocol import Cancelled, ErrorCode, MissingImage, OutOfMemory, Sampler, Unsupported


def test_txt2img_reports_the_seed_and_size(engine):
    result = engine.generate(small_request(seed=None, width=64, height=96))
    assert len(result.images) == 1 and result.images[0].size == (64, 96)
    assert result.images[0].mode == "RGB"
    assert isinstance(result.request.seed, int) and result.seeds == [result.request.seed]
    assert result.request.model == "tiny"
    assert pixels(result.images[0]).std() > 1  # not a blank image


def test_same_request_and_seed_is_bit_identical(engine):
    request = small_request(sampler="euler_a")  # ancestral: uses the generator at every step
    first = pixels(engine.generate(request).images[0])
    second = pixels(engine.generate(request).images[0])
    other_seed = pixels(engine.generate(request.model_copy(update={"seed": 8})).images[0])
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other_seed)


def test_batch_uses_consecutive_seeds_and_each_png_regenerates_its_image(engine):
    result = engine.generate(small_request(batch_size=3, seed=100))
    assert result.seeds == [100, 101, 102]
    assert len(result.images) == 3
    png = images.encode_png(result.images[2], result.request, seed=result.seeds[2])
    read_back = images.read_png_request(png)
    assert read_back.seed == 102 and read_back.batch_size == 1
    again = engine.generate(read_back).images[0]
    assert np.array_equal(pixels(again), pixels(result.images[2]))


def test_img2img_strength_controls_how_much_changes(engine):
    init = gradient_image()
    light = pixels(engine.generate(small_request(mode="img2img", strength=0.2, steps=5), init_image=init).images[0])
    heavy = pixels(engine.generate(small_request(mode="img2img", strength=1.0, steps=5), init_image=init).images[0])
    # The random VAE cannot reproduce the picture, but a light touch stays closer to what it encodes.
    reference = pixels(engine.generate(small_request(mode="img2img", strength=0.05, steps=20), init_image=init).images[0])
    assert np.abs(light - reference).mean() < np.abs(heavy - reference).mean()


def test_img2img_resizes_the_init_image_to_the_request(engine):
    result = engine.generate(small_request(mode="img2img", width=64, height=64), init_image=gradient_image(100, 80))
    assert result.images[0].size == (64, 64)


@pytest.mark.parametrize("mode", ["img2img", "inpaint", "outpaint"])
def test_modes_without_their_images_raise_missing_image(engine, mode):
    extra = {"outpaint": {"right": 16}} if mode == "outpaint" else {}
    with pytest.raises(MissingImage) as info:
        engine.generate(small_request(mode=mode, **extra))
    assert info.value.field == "init_image"
    assert info.value.code is ErrorCode.missing_image


def test_inpaint_without_mask_names_the_mask(engine):
    with pytest.raises(MissingImage) as info:
        engine.generate(small_request(mode="inpaint"), init_image=gradient_image())
    assert info.value.field == "mask"


def _outside(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) == 0


@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_keeps_every_pixel_outside_the_mask(engine, only_masked):
    init, mask = gradient_image(), box_mask(box=(24, 20, 40, 36))
    request = small_request(mode="inpaint", strength=1.0, mask={"blur": 2, "only_masked": only_masked, "padding": 8})
    out = engine.generate(request, init_image=init, mask=mask).images[0]
    prepared = images.prepare_mask(mask, init.size, blur=2, invert=False)
    keep = _outside(prepared)
    assert np.array_equal(pixels(out)[keep], pixels(init)[keep])
    inside = ~keep
    assert np.abs(pixels(out)[inside] - pixels(init)[inside]).mean() > 5  # the masked area was repainted


def test_inpaint_only_masked_differs_from_whole_image_inpaint(engine):
    init, mask = gradient_image(), box_mask(box=(28, 28, 36, 36))
    whole = engine.generate(small_request(mode="inpaint", mask={"blur": 0}), init_image=init, mask=mask).images[0]
    cropped = engine.generate(small_request(mode="inpaint", mask={"blur": 0, "only_masked": True, "padding": 4}), init_image=init, mask=mask).images[0]
    assert not np.array_equal(pixels(whole), pixels(cropped))


def test_inverted_mask_repaints_the_other_side(engine):
    init, mask = gradient_image(), box_mask(box=(16, 16, 48, 48))
    out = engine.generate(small_request(mode="inpaint", strength=1.0, mask={"blur": 0, "invert": True}), init_image=init, mask=mask).images[0]
    inside = np.asarray(mask) == 255
    assert np.array_equal(pixels(out)[inside], pixels(init)[inside])


def test_empty_mask_is_an_invalid_request_naming_the_mask(engine):
    with pytest.raises(Exception) as info:
        engine.generate(small_request(mode="inpaint"), init_image=gradient_image(), mask=Image.new("L", (64, 64), 0))
    assert info.value.code is ErrorCode.invalid_request and info.value.field == "mask"


def test_rgba_mask_uses_its_alpha(engine):
    init = gradient_image()
    stroke = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    stroke.paste((255, 255, 255, 255), (8, 8, 24, 24))
    out = engine.generate(small_request(mode="inpaint", strength=1.0, mask={"blur": 0}), init_image=init, mask=stroke).images[0]
    keep = np.asarray(stroke.getchannel("A")) == 0
    assert np.array_equal(pixels(out)[keep], pixels(init)[keep])
    assert not np.array_equal(pixels(out)[~keep], pixels(init)[~keep])


def test_dedicated_inpainting_model_runs_every_mode(inpaint_engine):
    assert inpaint_engine.status.inpaint_native
    assert inpaint_engine.model.base.unet.config.in_channels == 9
    init, mask = gradient_image(), box_mask()
    out = inpaint_engine.generate(small_request(mode="inpaint", mask={"blur": 0}), init_image=init, mask=mask).images[0]
    keep = np.asarray(mask) == 0
    assert np.array_equal(pixels(out)[keep], pixels(init)[keep])
    assert inpaint_engine.generate(small_request()).images[0].size == (64, 64)
    assert inpaint_engine.generate(small_request(mode="img2img"), init_image=init).images[0].size == (64, 64)


@pytest.mark.parametrize("extent", [{"right": 24}, {"left": 8, "top": 16, "bottom": 5}])
def test_outpaint_extends_and_keeps_the_original(engine, extent):
    init = gradient_image()
    request = small_request(mode="outpaint", outpaint=extent, strength=1.0)
    out = engine.generate(request, init_image=init).images[0]
    left, top = extent.get("left", 0), extent.get("top", 0)
    assert out.size == (64 + left + extent.get("right", 0), 64 + top + extent.get("bottom", 0))
    region = pixels(out)[top : top + 64, left : left + 64]
    assert np.array_equal(region, pixels(init))
    new_area = np.ones(out.size[::-1], bool)
    new_area[top : top + 64, left : left + 64] = False
    assert pixels(out)[new_area].std() > 1  # filled with generated content, not a flat colour


def test_outpaint_without_extent_is_rejected_by_the_request_model():
    with pytest.raises(ValueError):
        small_request(mode="outpaint")


def _wraps(module, latent: torch.Tensor, dim: int, **kwargs) -> bool:
    """Is `module` shift-equivariant along `dim` (what circular padding on that axis gives)?"""
    out = module(latent.roll(4, dims=dim), **kwargs).sample
    expected = module(latent, **kwargs).sample.roll(4 * out.shape[-1] // latent.shape[-1], dims=dim)
    return torch.allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("seamless, wrap_x, wrap_y", [("x", True, False), ("y", False, True), ("xy", True, True)])
def test_seamless_wraps_unet_and_vae_on_exactly_the_requested_axes_while_generating(engine, seamless, wrap_x, wrap_y):
    unet, vae = engine.model.base.unet, engine.model.base.vae
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    seen = []

    def check(update):
        if update.step == 1:
            seen.append((
                _wraps(unet, latent, 3, timestep=10, encoder_hidden_states=text),
                _wraps(unet, latent, 2, timestep=10, encoder_hidden_states=text),
                _wraps(vae.decode, latent, 3),
                _wraps(vae.decode, latent, 2),
            ))

    engine.generate(small_request(seamless=seamless), on_step=check)
    assert seen == [(wrap_x, wrap_y, wrap_x, wrap_y)]
    # Restored afterwards: no axis wraps any more.
    assert not _wraps(unet, latent, 3, timestep=10, encoder_hidden_states=text)
    assert not _wraps(vae.decode, latent, 2)


def _generate_with_rolled_noise(engine, monkeypatch, request, shift: int, dim: int) -> np.ndarray:
    """Generate with the pipeline's initial noise rolled by `shift` latents along `dim`."""
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion as sd

    original = sd.randn_tensor
    monkeypatch.setattr(sd, "randn_tensor", lambda *a, **k: original(*a, **k).roll(shift, dims=dim))
    try:
        return pixels(engine.generate(request).images[0])
    finally:
        monkeypatch.setattr(sd, "randn_tensor", original)


@pytest.mark.parametrize("width, height", [(64, 64), (192, 128)])  # 192x128 decodes in wrapped tiles
def test_seamless_output_is_periodic_on_exactly_the_requested_axis(engine, monkeypatch, width, height):
    """End to end: with wrapping everywhere, shifting the initial noise by whole tiles shifts the
    final image by the same amount (x8 pixels), which only holds on a wrapped axis."""
    request = small_request(width=width, height=height, steps=3, seed=11, seamless="x")
    base = pixels(engine.generate(request).images[0])
    shift = 8 if width == 64 else 12  # latents; a multiple of the wrapped tile spacing (6) for 192 px
    shifted_x = _generate_with_rolled_noise(engine, monkeypatch, request, shift, dim=3)
    rolled = np.roll(base, shift * 8, axis=1)
    assert np.abs(shifted_x - rolled).max() <= 1 and np.abs(shifted_x - rolled).mean() < 0.01
    # The y axis is not wrapped: the same test fails there.
    shifted_y = _generate_with_rolled_noise(engine, monkeypatch, request, 4, dim=2)
    assert np.abs(shifted_y - np.roll(base, 32, axis=0)).mean() > 5


def test_large_outputs_decode_in_bounded_tiles(engine, monkeypatch):
    """Beyond the native size (64 px for tiny) the VAE decodes native-size tiles, never the
    whole latent at once: memory stays bounded however large the image."""
    vae = engine.model.base.vae
    shapes = []
    original = vae.decode
    monkeypatch.setattr(vae, "decode", lambda z, *a, **k: (shapes.append(tuple(z.shape[-2:])), original(z, *a, **k))[1])
    out = engine.generate(small_request(width=256, height=128, steps=2)).images[0]
    assert out.size == (256, 128)
    assert len(shapes) > 1 and all(h <= 8 and w <= 8 for h, w in shapes)
    shapes.clear()
    engine.generate(small_request(width=64, height=64, steps=2))
    assert shapes == [(8, 8)]


def test_every_sampler_runs_reproducibly_and_a_choice_does_not_leak_into_the_next_request(engine):
    baseline = pixels(engine.generate(small_request(sampler="euler")).images[0])
    outputs = {}
    for sampler in Sampler:
        outputs[sampler] = pixels(engine.generate(small_request(sampler=sampler.value)).images[0])
        again = pixels(engine.generate(small_request(sampler=sampler.value)).images[0])
        assert np.array_equal(again, outputs[sampler]), f"{sampler.value} is not reproducible"
    # Stochastic samplers draw their extra noise from the request's seed.
    for stochastic in (Sampler.euler_a, Sampler.dpmpp_sde_karras):
        other_seed = pixels(engine.generate(small_request(sampler=stochastic.value, seed=8)).images[0])
        assert not np.array_equal(other_seed, outputs[stochastic])
    assert not np.array_equal(outputs[Sampler.euler_a], outputs[Sampler.ddim])
    assert np.array_equal(outputs[Sampler.euler], baseline)
    assert np.array_equal(pixels(engine.generate(small_request(sampler="euler")).images[0]), baseline)


def test_sde_sampler_without_torchsde_is_a_clear_unsupported(engine, monkeypatch):
    from latentbridge.engine import samplers

    monkeypatch.setattr(samplers, "_has_torchsde", lambda: False)
    with pytest.raises(Unsupported) as info:
        engine.generate(small_request(sampler="dpmpp_sde_karras"))
    assert "torchsde" in info.value.message and info.value.field == "sampler"


def test_step_callback_gives_progress_and_lazy_size_capped_previews(engine):
    updates: list[tuple[int, int, tuple[int, int]]] = []

    def on_step(update: StepUpdate) -> None:
        preview = update.preview()
        updates.append((update.step, update.total, preview.size))

    engine.generate(small_request(width=128, height=64, steps=4, preview={"max_size": 32}), on_step=on_step)
    assert [u[0] for u in updates] == [1, 2, 3, 4]
    assert all(total == 4 for _, total, _ in updates)
    assert all(size == (32, 16) for _, _, size in updates)


def test_previews_show_the_predicted_clean_image(engine):
    # The last preview of a run must look like the result (same colours roughly), not like noise.
    previews = []
    result = engine.generate(small_request(steps=6, preview={"max_size": 64}), on_step=lambda u: previews.append(u.preview()))
    last = pixels(previews[-1]).astype(float)
    first = pixels(previews[0]).astype(float)
    assert last.shape == (64, 64, 3)
    final = pixels(result.images[0]).astype(float)
    assert np.corrcoef(last.mean(axis=2).ravel(), final.mean(axis=2).ravel())[0, 1] > np.corrcoef(first.mean(axis=2).ravel(), final.mean(axis=2).ravel())[0, 1] - 0.05


def test_preview_decoder_none_and_vae(engine):
    seen = []
    engine.generate(small_request(preview={"decoder": "none"}), on_step=lambda u: seen.append(u.preview()))
    assert seen and all(p is None for p in seen)
    seen.clear()
    engine.generate(small_request(preview={"decoder": "vae", "max_size": 64}), on_step=lambda u: seen.append(u.preview()))
    assert all(p.size == (64, 64) for p in seen)


def test_previews_do_not_change_the_image(engine):
    with_previews = engine.generate(small_request(), on_step=lambda u: u.preview()).images[0]
    without = engine.generate(small_request()).images[0]
    assert np.array_equal(pixels(with_previews), pixels(without))


def test_cancel_stops_at_the_next_step_and_the_engine_stays_usable(engine):
    cancel = threading.Event()
    steps = []

    def on_step(update):
        steps.append(update.step)
        if update.step == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        engine.generate(small_request(steps=10), on_step=on_step, cancel=cancel)
    assert steps == [1, 2]
    out = engine.generate(small_request()).images[0]
    assert np.array_equal(pixels(out), pixels(engine.generate(small_request()).images[0]))


def test_cancel_before_start_runs_no_step(engine):
    cancel = threading.Event()
    cancel.set()
    steps = []
    with pytest.raises(Cancelled):
        engine.generate(small_request(), on_step=lambda u: steps.append(u.step), cancel=cancel)
    assert steps == []


def test_out_of_memory_becomes_a_typed_error_and_the_next_request_runs(engine):
    def explode(update):
        # Raised from inside the pipeline call, exactly where a CUDA allocation would fail.
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(OutOfMemory) as info:
        engine.generate(small_request(width=64, height=64), on_step=explode)
    assert info.value.code is ErrorCode.out_of_memory and "smaller" in info.value.message
    assert engine.generate(small_request()).images[0].size == (64, 64)


def test_sdxl_family_runs_every_mode(sdxl_engine):
    assert sdxl_engine.status.family == "sdxl"
    init, mask = gradient_image(), box_mask()
    assert sdxl_engine.generate(small_request()).images[0].size == (64, 64)
    assert sdxl_engine.generate(small_request(mode="img2img"), init_image=init).images[0].size == (64, 64)
    out = sdxl_engine.generate(small_request(mode="inpaint", mask={"blur": 0}), init_image=init, mask=mask).images[0]
    assert np.array_equal(pixels(out)[np.asarray(mask) == 0], pixels(init)[np.asarray(mask) == 0])
    assert sdxl_engine.generate(small_request(mode="outpaint", outpaint={"top": 16}), init_image=init).images[0].size == (64, 80)
    seen = []
    sdxl_engine.generate(small_request(seamless="xy"), on_step=lambda u: seen.append(u.preview().size))
    assert seen


def test_a_request_naming_another_model_loads_it(engine):
    from engine_helpers import make_engine

    switching = make_engine("tiny")
    out = switching.generate(small_request(model="tiny-sdxl"))
    assert switching.status.name == "tiny-sdxl" and switching.status.family == "sdxl"
    assert out.request.model == "tiny-sdxl"
