"""The engine's live path (engine/live.py, engine/fewstep.py) and the speed options
(engine/accel.py) on the tiny models, on CPU: presets, a still frame gives a still image, TAESD
frames, LoRAs kept resident for live and removed before a job, and every speed option either
running correctly or skipped where it cannot apply."""

import numpy as np
import pytest
from engine_helpers import gradient_image, make_engine, pixels, small_request
from lora_factory import has_lora_layers, save_tiny_lora
from PIL import Image

from latentbridge.engine import fewstep
from latentbridge.protocol import GenerationRequest, InvalidRequest, LiveOptions, LoraSpec, Unsupported

FRAME = {"mode": "img2img", "prompt": "weathered bronze", "width": 64, "height": 64, "strength": 0.5, "seed": 11}


@pytest.fixture(scope="module")
def live_engine():
    return make_engine("tiny", taesd="tiny-taesd")


def _frame(engine, session="s", revision=0, options=None, image=None, **fields):
    options = options or LiveOptions(preset="turbo", format="rgb")
    request = engine.live_request(GenerationRequest(**{**FRAME, **fields}), options)
    return engine.live_frame(session, revision, request, options, {"init": image or gradient_image()})


# ------------------------------------------------------------------ presets


@pytest.mark.parametrize("preset, sampler, guidance", [
    ("turbo", "euler", 0.0), ("lcm", "lcm", 1.0), ("lightning", "euler", 0.0), ("hyper", "ddim", 0.0),
    ("tcd", "tcd", 0.0)])
def test_presets_set_their_scheduler_and_run_their_steps_at_any_strength(preset, sampler, guidance):
    options = LiveOptions(preset=preset)
    wanted = fewstep.PRESETS[options.preset].steps
    for strength in (0.3, 0.5, 1.0):
        request = fewstep.live_request(GenerationRequest(**{**FRAME, "strength": strength}), options, "sd1", 150)
        assert request.sampler.value == sampler and request.guidance == guidance
        assert fewstep.steps_run("sd1", request.steps, strength) == wanted  # e.g. Turbo: 1 step at strength 0.3
    custom = fewstep.live_request(GenerationRequest(**FRAME, steps=9, sampler="dpmpp_2m"), LiveOptions(preset="custom"),
                                  "sd1", 150)
    assert (custom.steps, custom.sampler.value) == (9, "dpmpp_2m")  # the request's own


@pytest.mark.parametrize("fields, field", [
    ({"mode": "inpaint"}, "request.mode"), ({"mode": "txt2img"}, "request.mode"),
    ({"batch_size": 2}, "request.batch_size"), ({"seamless": "xy"}, "request.seamless")])
def test_what_a_live_session_cannot_render_is_refused_naming_the_field(fields, field):
    with pytest.raises(Unsupported) as caught:
        fewstep.live_request(GenerationRequest(**{**FRAME, **fields}), LiveOptions(), "sd1", 150)
    assert caught.value.field == field
    with pytest.raises(InvalidRequest) as caught:  # the tiny autoencoder decodes: a VAE override means nothing
        fewstep.live_request(GenerationRequest(**FRAME, vae="some-vae"), LiveOptions(decoder="taesd"), "sd1", 150)
    assert caught.value.field == "request.vae"


# ------------------------------------------------------------------ frames


def test_a_still_frame_gives_a_still_image_and_a_changed_frame_another(live_engine):
    first, again = _frame(live_engine), _frame(live_engine)
    assert first.image.size == (64, 64)
    assert np.array_equal(pixels(first.image), pixels(again.image))  # the session's seed: same noise each frame
    moved = _frame(live_engine, image=gradient_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert not np.array_equal(pixels(first.image), pixels(moved.image))
    assert set(first.timings) == {"setup", "denoise", "vae"}


def test_taesd_decodes_live_frames_when_one_fits_and_the_vae_otherwise(live_engine):
    assert live_engine.live_decoder(LiveOptions(decoder="taesd")) == "taesd"
    assert live_engine.live_decoder(LiveOptions(decoder="vae")) == "vae"
    tiny = _frame(live_engine, options=LiveOptions(decoder="taesd"))
    full = _frame(live_engine, session="other", options=LiveOptions(decoder="vae"))
    assert not np.array_equal(pixels(tiny.image), pixels(full.image))
    without = make_engine("tiny")  # no TAESD configured: the VAE, said so
    assert without.live_decoder(LiveOptions(decoder="taesd")) == "vae"


def test_a_new_revision_encodes_the_new_prompt_and_ending_a_session_frees_its_state(live_engine):
    before = _frame(live_engine, session="rev", revision=0)
    after = _frame(live_engine, session="rev", revision=1, prompt="polished marble")
    assert not np.array_equal(pixels(before.image), pixels(after.image))
    assert "rev" in live_engine._live._warm
    live_engine.live_end("rev")
    assert "rev" not in live_engine._live._warm


def test_live_loras_stay_loaded_between_frames_and_a_job_runs_on_the_base_weights(tmp_path):
    lora = save_tiny_lora(tmp_path / "lcm.safetensors")
    engine = make_engine("tiny", taesd="tiny-taesd")
    job = small_request()
    plain = engine.generate(job).images[0]
    options = LiveOptions(preset="lcm")
    with_lora = _frame(engine, options=options, loras=[LoraSpec(name=str(lora), weight=1.0)])
    assert has_lora_layers(engine.model.base.unet)  # resident: the next frame loads nothing
    without = _frame(engine, session="b", options=options)
    assert not np.array_equal(pixels(with_lora.image), pixels(without.image))
    _frame(engine, session="c", options=options, loras=[LoraSpec(name=str(lora), weight=1.0)])
    assert np.array_equal(pixels(engine.generate(job).images[0]), pixels(plain))  # evicted for the job
    assert not has_lora_layers(engine.model.base.unet)


# ------------------------------------------------------------------ speed options on CPU


def test_cuda_only_options_are_skipped_on_cpu_and_change_nothing(engine):
    fast = make_engine("tiny", channels_last=True, compile="default", cuda_graphs=True, compile_sizes=["64x64"])
    assert fast.accel.report["channels_last"].startswith("skipped: needs CUDA")
    assert fast.accel.report["compile"].startswith("skipped: needs CUDA")
    assert fast.accel.compiled is None
    request = small_request()
    assert np.array_equal(pixels(fast.generate(request).images[0]), pixels(engine.generate(request).images[0]))


@pytest.mark.parametrize("options", [{"attention": "eager"}, {"fused_qkv": True}])
def test_eager_attention_and_fused_projections_give_the_same_image(engine, options):
    other = make_engine("tiny", **options)
    assert other.accel.report[next(iter(options))] in ("eager", "on")
    request = small_request()
    a, b = pixels(other.generate(request).images[0]), pixels(engine.generate(request).images[0])
    assert np.abs(a - b).max() <= 2  # the same maths, summed in another order


def test_fused_projections_are_undone_for_a_lora_and_restored_after(tmp_path, engine):
    lora = save_tiny_lora(tmp_path / "style.safetensors")
    fused = make_engine("tiny", fused_qkv=True)
    request = small_request(loras=[LoraSpec(name=str(lora), weight=1.0)])
    a, b = pixels(fused.generate(request).images[0]), pixels(engine.generate(request).images[0])
    assert np.abs(a - b).max() <= 2
    attn = fused.model.base.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert getattr(attn, "fused_projections", False)  # fused again once the LoRA is gone


def test_the_step_cache_is_an_opt_in_trade_that_still_makes_an_image(engine):
    cached = make_engine("tiny", step_cache="on", step_cache_interval=2)
    assert cached.accel.report["step_cache"] == "on"
    request = small_request(steps=6)
    a, b = pixels(cached.generate(request).images[0]), pixels(engine.generate(request).images[0])
    assert a.shape == b.shape and not np.array_equal(a, b)  # deep blocks reused: close, not the same
    assert np.array_equal(a, pixels(cached.generate(request).images[0]))  # and fresh for every generation
