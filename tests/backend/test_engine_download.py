"""Hub downloads report progress: the file selection, and the engine's status while it fetches.

Nothing reaches the hub: the hub's file list and diffusers' download are replaced by fakes that
write into a temporary Hugging Face cache; the loading after the download is the real code.
"""

import time
from types import SimpleNamespace

import numpy as np
import pytest

from engine_helpers import make_engine, pixels, small_request
from latentbridge.engine import Engine, download, tiny
from latentbridge.protocol import ModelState, UnknownModel
from latentbridge.settings import Settings

SD15_FILES = {
    "model_index.json": 541,
    "README.md": 14_000,
    "v1-5-pruned-emaonly.safetensors": 4_265_000_000,  # the single-file copy: not fetched
    "v1-5-pruned.ckpt": 7_700_000_000,
    "scheduler/scheduler_config.json": 308,
    "text_encoder/config.json": 617,
    "text_encoder/model.safetensors": 492_000_000,
    "text_encoder/model.fp16.safetensors": 246_000_000,
    "text_encoder/pytorch_model.bin": 492_000_000,
    "text_encoder/flax_model.msgpack": 492_000_000,
    "tokenizer/vocab.json": 1_059_962,
    "tokenizer/merges.txt": 524_619,
    "unet/config.json": 743,
    "unet/diffusion_pytorch_model.safetensors": 3_438_000_000,
    "unet/diffusion_pytorch_model.fp16.safetensors": 1_719_000_000,
    "unet/diffusion_pytorch_model.non_ema.bin": 3_438_000_000,
    "vae_encoder/model.onnx": 137_000_000,
    "vae/config.json": 547,
    "vae/diffusion_pytorch_model-00001-of-00002.safetensors": 200_000_000,
    "vae/diffusion_pytorch_model-00002-of-00002.safetensors": 134_000_000,
    "vae/diffusion_pytorch_model.fp16-00001-of-00002.safetensors": 167_000_000,
    "pickle_only/pytorch_model.bin": 1000,
}


def test_a_default_download_fetches_configs_and_non_variant_safetensors():
    chosen = download.fetched_files(SD15_FILES, allow_pickle=False)
    assert set(chosen) == {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model-00001-of-00002.safetensors",
        "vae/diffusion_pytorch_model-00002-of-00002.safetensors",
    }
    # Pickle weights only where a folder has nothing else, and only when allowed.
    assert "pickle_only/pytorch_model.bin" in download.fetched_files(SD15_FILES, allow_pickle=True)
    assert "unet/diffusion_pytorch_model.non_ema.bin" not in download.fetched_files(SD15_FILES, allow_pickle=True)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A hub repo `acme/tiny-diffusion` holding the built-in tiny model: its file list comes from
    the saved folder, and 'downloading' it writes those bytes into a temporary cache in chunks."""
    import diffusers
    import huggingface_hub

    saved = tmp_path / "saved"
    tiny.build_pipeline("tiny").save_pretrained(saved, safe_serialization=True)
    files = {str(p.relative_to(saved)): p.stat().st_size for p in saved.rglob("*") if p.is_file()}
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, files_metadata=False: SimpleNamespace(
        siblings=[SimpleNamespace(rfilename=name, size=size) for name, size in files.items()]))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "POLL_S", 0.02)
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        if repo_id != "acme/tiny-diffusion":
            raise OSError(f"{repo_id} is not a valid model identifier")
        blobs = download.cache_folder(repo_id) / "blobs"
        blobs.mkdir(parents=True)
        for index, (name, size) in enumerate(files.items()):
            (blobs / f"blob{index}.incomplete").write_bytes(b"\0" * size)
            time.sleep(0.01)
        time.sleep(0.3)  # the last bytes are there: let the watcher see them
        return str(saved)  # the snapshot folder diffusers would return

    monkeypatch.setattr(diffusers.DiffusionPipeline, "download", staticmethod(fake_download))
    return SimpleNamespace(calls=calls, total=sum(download.fetched_files(files, False).values()))


def test_a_hub_model_reports_download_progress_then_loads(fake_hub, monkeypatch):
    seen = []
    original = Engine._set_status

    def record(self, **values):
        original(self, **values)
        seen.append(self.status)

    monkeypatch.setattr(Engine, "_set_status", record)
    engine = Engine(Settings(model="acme/tiny-diffusion"), local=True)
    engine.load()

    states = [(s.state, s.progress) for s in seen]
    downloading = [p for state, p in states if state is ModelState.downloading]
    assert downloading and all(p is not None and 0 <= p <= 0.99 for p in downloading)
    assert downloading == sorted(downloading) and downloading[-1] > 0.5  # it moves forward
    assert states[-1] == (ModelState.ready, None)
    assert fake_hub.calls == [("acme/tiny-diffusion", {"use_safetensors": True})]
    # The downloaded model is the tiny one, loaded by the real folder code.
    reference = make_engine("tiny").generate(small_request()).images[0]
    assert np.array_equal(pixels(engine.generate(small_request()).images[0]), pixels(reference))


def test_a_failed_download_is_a_typed_error_and_clears_the_progress(fake_hub):
    engine = Engine(Settings(model="acme/no-such-model"), local=True)
    with pytest.raises(UnknownModel) as info:
        engine.load()
    assert "acme/no-such-model" in info.value.message
    assert engine.status.state is ModelState.failed and engine.status.progress is None


def test_offline_never_downloads(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModel) as info:
        Engine(Settings(model="acme/tiny-diffusion"), local=True).load()
    assert "downloads are off" in info.value.message and fake_hub.calls == []


def _unreachable(repo_id, **kwargs):
    """What diffusers raises when the hub cannot be reached: a misleading 'outgoing traffic has been
    disabled' on top of the connection error."""
    import socket

    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as cause:
            raise ConnectionError("[Errno -2] Name or service not known") from cause
    except ConnectionError:
        raise OSError(f"Cannot load model {repo_id}: the model is not fully cached locally (Cannot find an appropriate "
                      "cached snapshot folder for the specified revision on the local disk and outgoing traffic has "
                      "been disabled. To enable repo look-ups and downloads online, pass 'local_files_only=False' "
                      "as input.) and a long tail that must not be cut: " + "x" * 400) from None


def _not_found(repo_id, **kwargs):
    from huggingface_hub.errors import RepositoryNotFoundError

    url = f"https://huggingface.co/api/models/{repo_id}"
    response = SimpleNamespace(headers={}, request=SimpleNamespace(url=url), status_code=404)
    raise RepositoryNotFoundError(f"404 Client Error: Repository Not Found for url: {url}", response=response)


@pytest.mark.parametrize("fetch, reason", [
    (_unreachable, "the Hugging Face hub could not be reached"),
    (_not_found, "the hub has no model 'acme/unreachable' that you may read"),
])
def test_a_hub_model_that_cannot_be_had_says_what_was_tried_and_what_to_pass(fake_hub, monkeypatch, fetch, reason):
    import diffusers

    monkeypatch.setattr(diffusers.DiffusionPipeline, "download", staticmethod(fetch))
    with pytest.raises(UnknownModel) as info:
        Engine(Settings(model="acme/unreachable"), local=True).load()
    message = info.value.message
    assert reason in message
    assert "disabled" not in message  # the user disabled nothing
    assert "not in the local model cache" in message and "models--acme--unreachable" in message  # what was tried
    assert "local diffusers folder" in message and ".safetensors" in message and "'tiny'" in message  # what instead
    assert message.endswith("or 'tiny' for the built-in test model")  # whole, never cut short
