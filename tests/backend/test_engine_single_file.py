"""A real single-file checkpoint (original SD 1.x key layout) round-trips through the engine's loader.

The built-in `tiny` model is written as one LDM-layout `.safetensors` file plus its diffusers
config folder, loaded back with `Engine(Settings(model=<file>, ...))` (diffusers `from_single_file`
with a local config, offline), and must come back weight-for-weight and image-for-image identical.
"""

import numpy as np
import pytest
import torch
from ldm_checkpoint import ldm_state_dict, save_ldm_checkpoint

from latentbridge.engine import Engine
from latentbridge.protocol import ErrorCode, GenerationRequest, LatentBridgeError, UnknownModel
from latentbridge.settings import Settings

COMPONENTS = ("unet", "vae", "text_encoder")


def _request() -> GenerationRequest:
    return GenerationRequest(prompt="a red brick wall", width=64, height=64, steps=2, seed=1, sampler="euler")


@pytest.fixture(scope="module")
def builtin() -> Engine:
    """The built-in `tiny` engine: the model written to disk and the images to match."""
    engine = Engine(Settings(model="tiny"), local=True)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def original(builtin):
    return builtin.model.base


@pytest.fixture(scope="module")
def files(original, tmp_path_factory):
    """`cfg/` (diffusers config folder), `model.safetensors` (LDM layout) and `model.ckpt` (same, pickled)."""
    root = tmp_path_factory.mktemp("single-file")
    original.save_pretrained(root / "cfg")
    save_ldm_checkpoint(original, root / "model.safetensors")
    torch.save({"state_dict": ldm_state_dict(original)}, root / "model.ckpt")
    return root


@pytest.fixture(scope="module")
def reference_image(builtin):
    return np.asarray(builtin.generate(_request()).images[0])


def _load(settings: Settings) -> Engine:
    engine = Engine(settings, local=True)
    engine.load()
    return engine


def _assert_same_weights(engine: Engine, original) -> None:
    assert engine.model.source.kind == "single_file"
    assert engine.model.family == "sd1"
    for name in COMPONENTS:
        loaded = getattr(engine.model.base, name).state_dict()
        expected = getattr(original, name).state_dict()
        assert loaded.keys() == expected.keys(), name
        for key, value in expected.items():
            assert torch.equal(loaded[key], value), f"{name}.{key} differs"


def test_ldm_layout_is_the_original_sd_layout(files):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint
    from safetensors import safe_open

    # diffusers' own sniffing takes the file for an SD 1.x checkpoint.
    assert infer_diffusers_model_type(load_single_file_checkpoint(str(files / "model.safetensors"))) == "v1"

    with safe_open(str(files / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
        # Original key names, and a VAE attention weight stored as a 1x1 convolution as in real files.
        assert "model.diffusion_model.input_blocks.0.0.weight" in keys
        assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
        assert tuple(handle.get_tensor("first_stage_model.decoder.mid.attn_1.q.weight").shape) == (16, 16, 1, 1)
    assert all(key.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.")) for key in keys)


def test_single_file_with_config_dir_round_trips(files, original, reference_image):
    engine = _load(Settings(model=str(files / "model.safetensors"), model_config_dir=str(files / "cfg")))
    _assert_same_weights(engine, original)
    image = np.asarray(engine.generate(_request()).images[0])
    assert image.std() > 1  # a real picture, not a blank one
    assert np.array_equal(image, reference_image)


def test_single_file_finds_the_config_folder_beside_it(files, original, tmp_path):
    # `model.safetensors` + `model/` next to it: no --model-config-dir needed. (Same weights and
    # configs as above, so the same images: not generated again, to keep the suite fast.)
    (tmp_path / "model.safetensors").symlink_to(files / "model.safetensors")
    (tmp_path / "model").symlink_to(files / "cfg", target_is_directory=True)
    engine = _load(Settings(model=str(tmp_path / "model.safetensors")))
    _assert_same_weights(engine, original)


def test_single_file_without_any_config_says_to_pass_a_config_dir(files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "model.safetensors").symlink_to(files / "model.safetensors")
    with pytest.raises(UnknownModel) as info:
        _load(Settings(model=str(tmp_path / "model.safetensors")))
    assert "--model-config-dir" in info.value.message and "'model/'" in info.value.message


def test_config_dir_without_model_index_is_refused(files, tmp_path):
    with pytest.raises(UnknownModel) as info:
        _load(Settings(model=str(files / "model.safetensors"), model_config_dir=str(tmp_path)))
    assert info.value.field == "model_config_dir"


def test_pickle_checkpoint_is_refused_unless_allowed(files, original):
    settings = dict(model=str(files / "model.ckpt"), model_config_dir=str(files / "cfg"))
    with pytest.raises(LatentBridgeError) as info:
        _load(Settings(**settings))
    assert info.value.code is ErrorCode.unsupported
    assert "--allow-pickle" in info.value.message
    _assert_same_weights(_load(Settings(**settings, allow_pickle=True)), original)
