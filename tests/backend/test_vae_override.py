"""A VAE per request: diffusers folders and single files (diffusers or A1111's LDM key names)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import gradient_image, pixels, small_request
from ldm_checkpoint import vae_to_ldm
from safetensors.torch import save_file

from latentbridge.engine import tiny
from latentbridge.engine.vae import resolve_vae, vae_entries
from latentbridge.settings import Settings
from latentbridge.protocol import LatentBridgeError


def _other_vae(seed: int = 1):
    """A VAE of the tiny model's architecture with other (random) weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tiny._vae(sdxl=False).eval()


@pytest.fixture
def vae_dir(tmp_path):
    other = _other_vae()
    other.save_pretrained(tmp_path / "other-vae")  # a diffusers folder (the real save code)
    state = {k: v.contiguous() for k, v in other.state_dict().items()}
    save_file(state, str(tmp_path / "other.safetensors"))  # diffusers key names in one file
    ldm = {k: v.detach().contiguous().clone() for k, v in vae_to_ldm(other.state_dict(), other.config).items()}
    save_file(ldm, str(tmp_path / "other-ldm.safetensors"))  # A1111's VAE files: LDM key names
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        sixteen = tiny._flow_vae(1.0, 0.0)
    save_file({k: v.contiguous() for k, v in sixteen.state_dict().items()}, str(tmp_path / "flux-like.safetensors"))
    torch.save(state, tmp_path / "pickled.pt")
    return tmp_path


@pytest.fixture
def vae_engine(engine, monkeypatch, vae_dir):
    monkeypatch.setattr(engine.settings, "vae_dirs", [vae_dir])
    return engine


def test_every_layout_decodes_with_the_override_and_the_model_keeps_its_own(vae_engine, vae_dir):
    own_vae = vae_engine.model.base.vae
    own = pixels(vae_engine.generate(small_request(steps=2)).images[0])
    outputs = {}
    for name in ("other-vae", "other.safetensors", "other-ldm.safetensors"):
        outputs[name] = pixels(vae_engine.generate(small_request(steps=2, vae=name)).images[0])
        assert not np.array_equal(outputs[name], own), name
        assert vae_engine.model.base.vae is own_vae
        assert all(p.vae is own_vae for p in vae_engine.model.pipes.values())
    # The three files hold the same weights: the same picture, to the bit.
    assert np.array_equal(outputs["other-vae"], outputs["other.safetensors"])
    assert np.array_equal(outputs["other-vae"], outputs["other-ldm.safetensors"])
    assert np.array_equal(pixels(vae_engine.generate(small_request(steps=2)).images[0]), own)
    # img2img encodes with it too.
    init = gradient_image()
    a = vae_engine.generate(small_request(mode="img2img", steps=2, strength=0.5), init_image=init).images[0]
    b = vae_engine.generate(small_request(mode="img2img", steps=2, strength=0.5, vae="other-vae"), init_image=init).images[0]
    assert not np.array_equal(pixels(a), pixels(b))


def test_what_does_not_fit_or_is_not_allowed_is_a_typed_error(vae_engine, vae_dir, monkeypatch):
    for name, words in (("flux-like.safetensors", "does not fit"), ("missing.safetensors", "not found"),
                        ("pickled.pt", "pickle")):
        with pytest.raises(LatentBridgeError) as info:
            vae_engine.generate(small_request(steps=2, vae=name))
        assert info.value.field == "vae" and words in info.value.message, (name, info.value.message)
    assert set(vae_engine.vaes()[i]["model_name"] for i in range(4)) == \
        {"other-vae", "other.safetensors", "other-ldm.safetensors", "flux-like.safetensors"}
    # A remote client (the server's engine is not local) names VAEs inside the folders only.
    (vae_dir / "inner").mkdir()
    with pytest.raises(LatentBridgeError, match="outside"):
        resolve_vae("../other.safetensors", Settings(vae_dirs=[vae_dir / "inner"]), local=False)
    monkeypatch.setattr(vae_engine.settings, "allow_pickle", True)
    assert "pickled.pt" in vae_entries(vae_engine.settings)
    assert vae_engine.generate(small_request(steps=2, vae="pickled.pt")).images[0].size == (64, 64)
