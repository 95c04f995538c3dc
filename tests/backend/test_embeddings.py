"""Textual-inversion embeddings: used in prompts by name, every A1111 file format, undone after."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import pixels, small_request
from safetensors.torch import save_file

from latentbridge.engine import embeddings
from latentbridge.protocol import LatentBridgeError


def _vectors(count: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 5


@pytest.fixture
def emb_dir(tmp_path):
    save_file({"emb_params": _vectors(3, 32)}, str(tmp_path / "bronzestyle.safetensors"))  # A1111 .safetensors
    save_file({"<cat-toy>": _vectors(1, 32, 1)[0]}, str(tmp_path / "cattoy.safetensors"))  # diffusers
    torch.save({"string_to_param": {"*": _vectors(2, 32, 2)}, "name": "old", "step": 1500,
                "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "v1-5"}, tmp_path / "oldstyle.pt")  # A1111 .pt
    save_file({"clip_l": _vectors(2, 32, 3), "clip_g": _vectors(2, 32, 4)}, str(tmp_path / "xlstyle.safetensors"))
    save_file({"emb_params": _vectors(1, 768, 5)}, str(tmp_path / "sd15only.safetensors"))
    return tmp_path


@pytest.fixture
def with_dirs(monkeypatch):
    """The session's engine with these settings for one test (the engine reads them per request)."""

    def configure(engine, **values):
        for key, value in values.items():
            monkeypatch.setattr(engine.settings, key, value)
        return engine

    return configure


def _prompt(engine, prompt: str) -> np.ndarray:
    return pixels(engine.generate(small_request(prompt=prompt, steps=2, guidance=1.0)).images[0])


def test_an_embedding_named_in_the_prompt_changes_the_image_and_is_removed_afterwards(engine, with_dirs, emb_dir):
    with_dirs(engine, embedding_dirs=[emb_dir])
    tokenizer, encoder = engine.model.base.tokenizer, engine.model.base.text_encoder
    vocab, rows = len(tokenizer), encoder.get_input_embeddings().weight.shape[0]
    plain = _prompt(engine, "a bronze statue")
    styled = _prompt(engine, "a bronze statue, bronzestyle")
    assert not np.array_equal(plain, styled)
    assert (len(tokenizer), encoder.get_input_embeddings().weight.shape[0]) == (vocab, rows)
    assert np.array_equal(_prompt(engine, "a bronze statue"), plain)  # the model is untouched after
    assert np.array_equal(_prompt(engine, "a bronze statue, bronzestyle"), styled)  # and it is reproducible
    # Only whole words name an embedding.
    assert np.array_equal(_prompt(engine, "a bronze statue, bronzestyles"), _prompt(engine, "a bronze statue, bronzestyles"))
    assert embeddings.named_in(["a bronzestyles cattoy, x"], ["bronzestyle", "cattoy"]) == ["cattoy"]


def test_the_listing_splits_what_fits_the_loaded_model(engine, sdxl_engine, with_dirs, emb_dir):
    listing = with_dirs(engine, embedding_dirs=[emb_dir]).embeddings()
    assert set(listing["loaded"]) == {"bronzestyle", "cattoy"}
    assert listing["loaded"]["bronzestyle"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                                "shape": 32, "vectors": 3}
    assert set(listing["skipped"]) == {"xlstyle", "sd15only"}  # pickles are not even listed without opt-in
    allowed = with_dirs(engine, allow_pickle=True).embeddings()
    assert allowed["loaded"]["oldstyle"] == {"step": 1500, "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "v1-5",
                                             "shape": 32, "vectors": 2}
    xl = with_dirs(sdxl_engine, embedding_dirs=[emb_dir]).embeddings()
    assert set(xl["loaded"]) == {"xlstyle"} and xl["loaded"]["xlstyle"]["shape"] == 64


def test_sdxl_pairs_load_into_both_encoders_and_misfits_are_typed_errors(engine, sdxl_engine, with_dirs, emb_dir):
    xl = with_dirs(sdxl_engine, embedding_dirs=[emb_dir])
    assert not np.array_equal(_prompt(xl, "a vase"), _prompt(xl, "a vase xlstyle"))
    assert len(xl.model.base.tokenizer_2) == len(xl.model.base.tokenizer)  # both undone
    tiny = with_dirs(engine, embedding_dirs=[emb_dir])
    for name in ("sd15only", "xlstyle"):
        with pytest.raises(LatentBridgeError) as info:
            _prompt(tiny, f"a vase {name}")
        assert info.value.field == "prompt" and name in info.value.message
    assert np.array_equal(_prompt(tiny, "a vase"), _prompt(tiny, "a vase"))  # nothing was left half-loaded


def test_pickled_embeddings_need_the_opt_in(engine, with_dirs, emb_dir):
    with_dirs(engine, embedding_dirs=[emb_dir])
    refused = _prompt(engine, "a cup oldstyle")  # not listed without --allow-pickle: just a word
    with_dirs(engine, allow_pickle=True)
    assert not np.array_equal(_prompt(engine, "a cup oldstyle"), refused)
