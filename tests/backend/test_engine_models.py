"""Model loading: one set of weights for every mode, where models come from (built-ins, diffusers
folders, hub ids, model folders for remote clients), pickle refusal, families, device/dtype choice,
memory settings, and load failures that leave the engine usable."""

import logging
import shutil
import socket

import numpy as np
import pytest
import torch
from engine_helpers import box_mask, gradient_image, make_engine, pixels, small_request

from latentbridge.engine import Engine, models, tiny
from latentbridge.engine import generate as generate_module
from latentbridge.protocol import ErrorCode, LatentBridgeError, ModelState, UnknownModel
from latentbridge.settings import Settings

COMPONENTS = ("unet", "vae", "text_encoder")
MODES = ("text2image", "image2image", "inpaint")


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    """A model folder as a user would keep one: the tiny model saved as safetensors and as pickle,
    a truncated copy, a bare .safetensors file, a pickle checkpoint and some clutter."""
    root = tmp_path_factory.mktemp("models")
    pipe = tiny.build_pipeline("tiny")
    pipe.save_pretrained(root / "tiny-folder", safe_serialization=True)
    pipe.save_pretrained(root / "pickled", safe_serialization=False)
    shutil.copytree(root / "tiny-folder", root / "broken")
    weights = root / "broken" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (root / "single.safetensors").write_bytes(b"listed by name only")
    (root / "old.ckpt").write_bytes(b"listed only with allow_pickle")
    (root / "not-a-model").mkdir()
    (root / "notes.txt").write_text("not a model")
    return root


@pytest.fixture(scope="module")
def reference_image(engine):
    """The built-in `tiny` model's image for `small_request(steps=2)`."""
    return pixels(engine.generate(small_request(steps=2)).images[0])


def _params(module: torch.nn.Module) -> list[int]:
    return [p.data_ptr() for p in module.parameters()]


# --------------------------------------------------------------------------------------------
# One set of weights


def test_one_set_of_weights_serves_every_mode(engine, monkeypatch):
    loads = []
    real_load = models.load
    monkeypatch.setattr(models, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    loaded = engine.model
    base = loaded.base
    calls = {name: 0 for name in ("unet", "text_encoder")}
    hooks = [getattr(base, name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1)) for name in calls]
    used = {}
    init, mask = gradient_image(), box_mask()
    try:
        for mode, kind in zip(("txt2img", "img2img", "inpaint"), MODES):
            before = dict(calls)
            engine.generate(small_request(mode=mode, steps=2), init_image=init, mask=mask)
            # Each mode ran on the base model's own UNet and text encoder.
            used[kind] = {name: calls[name] - before[name] for name in calls}
    finally:
        for hook in hooks:
            hook.remove()
    assert all(count > 0 for counts in used.values() for count in counts.values()), used

    assert loads == [] and engine.model is loaded  # no reload
    pipes = [loaded.pipes[kind] for kind in MODES]
    assert [type(p).__name__ for p in pipes] == [
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    ]
    for pipe in pipes:
        for name in COMPONENTS:
            assert getattr(pipe, name) is getattr(base, name), name
            assert _params(getattr(pipe, name)) == _params(getattr(base, name)), name
    # Not one tensor was copied: every pipeline together holds exactly the base's parameters.
    held = {ptr for pipe in pipes for name in COMPONENTS for ptr in _params(getattr(pipe, name))}
    assert held == {ptr for name in COMPONENTS for ptr in _params(getattr(base, name))}
    # The derived pipelines are made once and reused.
    engine.generate(small_request(mode="img2img", steps=2), init_image=init)
    assert loaded.pipes["image2image"] is pipes[1]


# --------------------------------------------------------------------------------------------
# Sources


def test_builtin_names_resolve_for_local_and_remote_callers(tmp_path):
    settings = Settings(model_dirs=[tmp_path])
    for name in tiny.PRESETS:
        assert models.resolve_source(name, settings) == models.ModelSource("builtin", name)
        assert models.resolve_source(name, settings, local=False) == models.ModelSource("builtin", name)


def test_local_diffusers_folder_gives_the_builtin_image_bit_for_bit(model_root, reference_image):
    engine = Engine(Settings(model="tiny", model_dirs=[model_root]))  # a server's engine: local=False
    result = engine.generate(small_request(steps=2, model="tiny-folder"))
    assert engine.model.source == models.ModelSource("folder", str(model_root / "tiny-folder"))
    status = engine.status
    assert (status.name, status.family, status.state) == ("tiny-folder", "sd1", ModelState.ready)
    assert result.request.model == "tiny-folder"
    assert np.array_equal(pixels(result.images[0]), reference_image)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # inside diffusers
def test_hub_id_offline_is_a_typed_error_saying_what_to_pass_and_touches_no_network(monkeypatch):
    connects = []

    def refuse(sock, address, *args):
        connects.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    assert models.resolve_source("someone/some-model", Settings()) == models.ModelSource("hub", "someone/some-model")
    engine = Engine(Settings(model="someone/some-model"), local=True)
    with pytest.raises(UnknownModel) as info:
        engine.load()
    message = info.value.message
    assert info.value.field == "model"
    assert "downloads are off" in message and "folder" in message and "'tiny'" in message
    assert engine.status.state is ModelState.failed and engine.status.error == message
    assert connects == []


@pytest.mark.parametrize("name, words", [
    ("/nonexistent/model.safetensors", "does not exist"),
    ("./missing-folder", "does not exist"),
    ("missing.safetensors", "does not exist"),
    ("no-such-model", "unknown model"),
    ("", "empty model name"),
])
def test_missing_models_are_unknown_model_errors(name, words):
    with pytest.raises(UnknownModel) as info:
        models.resolve_source(name, Settings())
    assert info.value.code is ErrorCode.unknown_model and info.value.field == "model"
    assert words in info.value.message and "tiny" in info.value.message


def test_folder_without_model_index_is_not_a_model(model_root):
    with pytest.raises(UnknownModel) as info:
        models.resolve_source(str(model_root / "not-a-model"), Settings())
    assert "model_index.json" in info.value.message


@pytest.mark.parametrize("name, words", [
    ("ABSOLUTE", "not by path"),  # replaced by the absolute path of the folder
    ("../elsewhere", "outside"),
    ("tiny-folder/../../elsewhere", "outside"),
    ("someone/some-model", "unknown model"),
    ("single-file-somewhere.safetensors", "unknown model"),
])
def test_remote_names_must_stay_inside_the_model_folders(model_root, name, words):
    settings = Settings(model_dirs=[model_root])
    if name == "ABSOLUTE":
        name = str(model_root / "tiny-folder")
    with pytest.raises(UnknownModel) as info:
        models.resolve_source(name, settings, local=False)
    assert words in info.value.message and info.value.field == "model"


def test_remote_names_inside_the_model_folders_are_accepted(model_root):
    settings = Settings(model=str(model_root / "pickled"), model_dirs=[model_root])
    assert models.resolve_source("tiny-folder", settings, local=False) == models.ModelSource("folder", str(model_root / "tiny-folder"))
    assert models.resolve_source("single.safetensors", settings, local=False).kind == "single_file"
    # The configured model is always allowed, whatever its path.
    assert models.resolve_source(str(model_root / "pickled"), settings, local=False).kind == "folder"
    with pytest.raises(UnknownModel) as info:
        models.resolve_source("tiny-folder", Settings(), local=False)
    assert "--model-dirs" in info.value.message


def test_list_local_models_finds_folders_and_safetensors(model_root, tmp_path):
    settings = Settings(model_dirs=[model_root, tmp_path / "not-there"])
    names = models.list_local_models(settings)
    assert names[: len(tiny.PRESETS)] == list(tiny.PRESETS)
    assert set(names[len(tiny.PRESETS) :]) == {"tiny-folder", "pickled", "broken", "single.safetensors"}
    assert "old.ckpt" in models.list_local_models(settings.model_copy(update={"allow_pickle": True}))
    assert Engine(settings).list_models() == names


def test_pickle_only_folder_is_refused_unless_allowed(model_root, engine):
    refusing = Engine(Settings(model=str(model_root / "pickled")), local=True)
    with pytest.raises(LatentBridgeError) as info:
        refusing.load()
    assert info.value.code is ErrorCode.unsupported and info.value.field == "model"
    assert "--allow-pickle" in info.value.message and "pickled/unet" in info.value.message
    assert refusing.status.state is ModelState.failed

    allowing = make_engine(str(model_root / "pickled"), allow_pickle=True)
    for name in COMPONENTS:
        loaded, expected = getattr(allowing.model.base, name).state_dict(), getattr(engine.model.base, name).state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in expected.items()), name


# --------------------------------------------------------------------------------------------
# Families, device, dtype


def test_family_reported_by_the_engine(engine, sdxl_engine):
    assert engine.status.family == "sd1" and engine.model.family == "sd1"
    assert sdxl_engine.status.family == "sdxl"


def test_family_of_tells_sd2_by_its_text_encoder_width():
    class Config:
        hidden_size = 1024

    class TextEncoder:
        config = Config()

    class StableDiffusionPipeline:
        text_encoder = TextEncoder()

    assert models.family_of(StableDiffusionPipeline()) == "sd2"
    Config.hidden_size = 768
    assert models.family_of(StableDiffusionPipeline()) == "sd1"


def _accelerators(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda, mps, device, dtype", [
    (False, False, "cpu", torch.float32),
    (True, False, "cuda", torch.float16),
    (True, True, "cuda", torch.float16),
    (False, True, "mps", torch.float16),
])
def test_automatic_device_and_dtype(monkeypatch, cuda, mps, device, dtype):
    _accelerators(monkeypatch, cuda, mps)
    picked = models.pick_device(None)
    assert picked.type == device
    assert models.pick_dtype(picked) == dtype


def test_explicit_device_and_dtype_win(monkeypatch):
    _accelerators(monkeypatch, cuda=True, mps=True)
    assert models.pick_device("cpu") == torch.device("cpu")
    assert models.pick_device("cuda:1") == torch.device("cuda:1")
    assert models.pick_dtype(torch.device("cuda"), "bfloat16") == torch.bfloat16
    assert models.pick_dtype(torch.device("cpu"), "float16") == torch.float16
    # Through the engine: the settings beat the (pretend) GPU.
    engine = make_engine("tiny", device="cpu", dtype="bfloat16")
    assert (engine.status.device, engine.status.dtype) == ("cpu", "bfloat16")
    assert engine.model.base.unet.dtype == torch.bfloat16


def test_flux_defaults_to_bf16_on_cuda(monkeypatch, tmp_path):
    """FLUX.1 overflows in fp16, so on CUDA a Flux model loads in bf16 unless the user chose."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    flux_folder = tmp_path / "my-model"
    flux_folder.mkdir()
    (flux_folder / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    for source in (models.ModelSource("builtin", "tiny-flux"), models.ModelSource("hub", "black-forest-labs/FLUX.1-dev"),
                   models.ModelSource("folder", str(flux_folder)), models.ModelSource("single_file", "/m/flux1-schnell.safetensors")):
        assert models.model_dtype(source, cuda) == torch.bfloat16, source
        assert models.model_dtype(source, cuda, "float16") == torch.float16  # the user's choice wins
        assert models.model_dtype(source, cpu) == torch.float32
    for source in (models.ModelSource("builtin", "tiny"), models.ModelSource("hub", "stabilityai/stable-diffusion-xl-base-1.0")):
        assert models.model_dtype(source, cuda) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # pre-Ampere GPUs
    assert models.model_dtype(models.ModelSource("builtin", "tiny-flux"), cuda) == torch.float16


@pytest.mark.parametrize("requested, words", [("gpu", "unknown device"), ("cuda", "CUDA"), ("mps", "MPS")])
def test_unusable_device_is_a_typed_error(monkeypatch, requested, words):
    _accelerators(monkeypatch, cuda=False, mps=False)
    with pytest.raises(LatentBridgeError) as info:
        models.pick_device(requested)
    assert info.value.code is ErrorCode.invalid_request and info.value.field == "device"
    assert words in info.value.message
    engine = Engine(Settings(model="tiny", device=requested))
    with pytest.raises(LatentBridgeError):
        engine.load()
    assert engine.status.state is ModelState.failed and words in engine.status.error


# --------------------------------------------------------------------------------------------
# Memory settings


def _spy_decode(monkeypatch, vae) -> tuple[list, list]:
    """Record the `tile` choice of every decode and the latent size of every VAE decode call."""
    tiles, shapes = [], []
    decode_latents, vae_decode = generate_module.decode_latents, vae.decode
    monkeypatch.setattr(generate_module, "decode_latents", lambda *a, **k: (tiles.append(k["tile"]), decode_latents(*a, **k))[1])
    monkeypatch.setattr(vae, "decode", lambda z, *a, **k: (shapes.append(tuple(z.shape[-2:])), vae_decode(z, *a, **k))[1])
    return tiles, shapes


def test_memory_settings_reach_the_pipeline(engine, monkeypatch, caplog):
    assert not engine.model.base.vae.use_slicing  # off by default
    with caplog.at_level(logging.WARNING, logger=models.__name__):
        tuned = make_engine("tiny", vae_slicing=True, cpu_offload=True, vae_tiling="off")
    assert tuned.model.base.vae.use_slicing
    # Offload needs CUDA: on CPU it is skipped with a warning, and the model is simply on the CPU.
    assert "cpu_offload needs a CUDA device" in caplog.text
    assert tuned.status.state is ModelState.ready and tuned.status.device == "cpu"

    tiles, shapes = _spy_decode(monkeypatch, tuned.model.base.vae)
    assert tuned.generate(small_request(steps=2, width=128, height=64)).images[0].size == (128, 64)
    assert tiles == [False] and shapes == [(8, 16)]  # beyond the native size, yet decoded whole
    tiles.clear()
    monkeypatch.setattr(tuned.settings, "vae_tiling", "on")
    tuned.generate(small_request(steps=1))
    assert tiles == [True]


class _SpyPipe:
    """Just enough of a pipeline to see what `place` does with it."""

    def __init__(self):
        self.calls = []
        self.vae = type("Vae", (), {"use_slicing": False, "enable_slicing": lambda self: setattr(self, "use_slicing", True)})()

    def set_progress_bar_config(self, **kwargs):
        pass

    def enable_model_cpu_offload(self, device=None):
        self.calls.append(("offload", str(device)))

    def to(self, device):
        self.calls.append(("to", str(device)))


@pytest.mark.parametrize("cpu_offload, device, calls", [
    (True, "cuda", [("offload", "cuda")]),
    (False, "cuda", [("to", "cuda")]),
    (True, "cpu", [("to", "cpu")]),
    (True, "mps", [("to", "mps")]),
])
def test_place_offloads_only_on_cuda(cpu_offload, device, calls):
    pipe = _SpyPipe()
    models.place(pipe, torch.device(device), Settings(cpu_offload=cpu_offload, vae_slicing=True))
    assert pipe.calls == calls
    assert pipe.vae.use_slicing


# --------------------------------------------------------------------------------------------
# Failures


def test_a_model_that_fails_to_load_leaves_the_engine_usable(model_root, reference_image):
    engine = Engine(Settings(model="tiny", model_dirs=[model_root]))
    with pytest.raises(LatentBridgeError) as info:
        engine.generate(small_request(steps=2, model="broken"))
    assert info.value.code is ErrorCode.model_load_failed and info.value.field == "model"
    status = engine.status
    assert status.state is ModelState.failed and status.name == "broken"
    assert status.error == info.value.message and "broken" in status.error

    result = engine.generate(small_request(steps=2, model="tiny"))
    assert np.array_equal(pixels(result.images[0]), reference_image)
    status = engine.status
    assert (status.name, status.state, status.error) == ("tiny", ModelState.ready, None)


def test_a_switch_that_fails_on_the_device_puts_the_old_model_back(model_root, reference_image, monkeypatch):
    """The new weights are read into CPU memory first, the old model is parked to make room on the
    accelerator, and when placing the new one fails the old one goes back and serves on."""
    engine = Engine(Settings(model="tiny", model_dirs=[model_root]))
    engine.load()
    old = engine.model
    calls = []
    real_place = models.place

    def park(loaded):
        calls.append(("park", loaded.name))
        return True  # as on a GPU: the weights moved to CPU memory

    def place(pipe, device, settings):
        calls.append(("place", "old" if pipe is old.base else "new"))
        if pipe is not old.base:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        real_place(pipe, device, settings)

    monkeypatch.setattr(models, "park", park)
    monkeypatch.setattr(models, "place", place)
    with pytest.raises(LatentBridgeError) as info:
        engine.load("tiny-folder")
    assert info.value.field == "model" and info.value.code is ErrorCode.out_of_memory
    assert calls == [("park", "tiny"), ("place", "new"), ("place", "old")]
    assert engine.model is old
    status = engine.status
    assert (status.name, status.state, status.error) == ("tiny", ModelState.ready, None)
    monkeypatch.undo()
    assert np.array_equal(pixels(engine.generate(small_request(steps=2)).images[0]), reference_image)
