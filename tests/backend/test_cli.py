"""The `latentbridge` command: flag parsing, one-line errors, info, --server delegation, and real
generation with the built-in tiny model (in-process and once as `python -m latentbridge`)."""

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentbridge import cli, images
from latentbridge.protocol import GenerationRequest, InvalidRequest, LoraSpec, Mode, Seamless
from latentbridge.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _library_env(monkeypatch):
    # The CLI quiets transformers/diffusers with os.environ.setdefault; keep that inside each test.
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        monkeypatch.setenv(name, os.environ.get(name, "error" if "VERBOSITY" in name else "1"))


def _png_file(path: Path, size=(64, 64), mode="RGB", seed=0, value=None) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    arr = np.full(shape, value, np.uint8) if value is not None else rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


def _mask_file(path: Path, size=(64, 64)) -> Path:
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[16:48, 16:48] = 255
    Image.fromarray(arr, "L").save(path)
    return path


def _args(*argv):
    return cli.build_parser().parse_args(["generate", *argv])


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- flag values --------------------------------------------------------------------------------


def test_parse_lora():
    assert cli.parse_lora("style.safetensors:0.8") == LoraSpec(name="style.safetensors", weight=0.8)
    assert cli.parse_lora("style.safetensors") == LoraSpec(name="style.safetensors", weight=1.0)
    assert cli.parse_lora(r"C:\loras\x.safetensors") == LoraSpec(name=r"C:\loras\x.safetensors", weight=1.0)
    assert cli.parse_lora(r"C:\loras\x.safetensors:-0.5").weight == -0.5
    with pytest.raises(InvalidRequest) as info:
        cli.parse_lora("x.safetensors:9")
    assert info.value.field == "lora.weight"


def test_parse_extent_and_seed():
    extent = cli.parse_extent("0, 8,128,0")
    assert (extent.left, extent.top, extent.right, extent.bottom) == (0, 8, 128, 0)
    for bad in ("1,2,3", "a,b,c,d", "0,0,-8,0", "0,0,99999,0"):
        with pytest.raises(InvalidRequest):
            cli.parse_extent(bad)
    assert cli.parse_seed("7") == 7 and cli.parse_seed("random") is None and cli.parse_seed("-1") is None
    for bad in ("x", str(2**32), "-5"):
        with pytest.raises(InvalidRequest):
            cli.parse_seed(bad)


def test_build_request_from_flags():
    req = cli.build_request(_args(
        "--prompt", "bronze", "--negative", "blurry", "--seed", "7", "--steps", "4", "--width", "64",
        "--height", "96", "--sampler", "euler", "--seamless", "xy", "--strength", "0.6", "--batch", "2",
        "--cfg", "5.5", "--lora", "a.safetensors:0.8", "--lora", "b.safetensors", "--mask-blur", "0",
        "--invert-mask", "--mode", "img2img", "--model", "tiny",
    ))
    assert req.prompt == "bronze" and req.negative_prompt == "blurry" and req.seed == 7 and req.steps == 4
    assert (req.width, req.height, req.batch_size, req.guidance, req.strength) == (64, 96, 2, 5.5, 0.6)
    assert req.sampler.value == "euler" and req.seamless is Seamless.xy and req.mode is Mode.img2img
    assert [(lo.name, lo.weight) for lo in req.loras] == [("a.safetensors", 0.8), ("b.safetensors", 1.0)]
    assert req.mask.blur == 0 and req.mask.invert and req.model == "tiny"
    defaults = cli.build_request(_args())
    assert defaults == GenerationRequest()


def test_reference_flags():
    req = cli.build_request(_args("--reference", "a.png", "--reference", "b.png", "--reference-weight", "0.9",
                                  "--reference-model", "tiny-ip-adapter"))
    assert (req.reference.images, req.reference.weight, req.reference.model) == (2, 0.9, "tiny-ip-adapter")
    assert req.image_roles() == ["reference.0", "reference.1"]
    for flags in (["--reference-weight", "0.5"], ["--reference-model", "x"]):
        with pytest.raises(InvalidRequest, match="pass --reference IMAGE"):
            cli.build_request(_args(*flags))


def test_mode_and_size_follow_the_images():
    assert cli.build_request(_args("--init", "x.png"), (100, 77)).mode is Mode.img2img
    req = cli.build_request(_args("--init", "x.png", "--mask", "m.png"), (100, 77))
    assert req.mode is Mode.inpaint and (req.width, req.height) == (96, 72)  # snapped down to /8
    req = cli.build_request(_args("--init", "x.png", "--extend", "0,0,64,0"), (64, 64))
    assert req.mode is Mode.outpaint and req.outpaint.right == 64
    req = cli.build_request(_args("--init", "x.png", "--width", "128", "--height", "64"), (100, 77))
    assert (req.width, req.height) == (128, 64)  # explicit sizes win
    req = cli.build_request(_args("--init", "x.png", "--width", "256"), (400, 200))
    assert (req.width, req.height) == (256, 128)  # one side given: the init image's aspect
    req = cli.build_request(_args("--init", "x.png", "--height", "96"), (400, 200))
    assert (req.width, req.height) == (192, 96)


def test_from_image_with_overrides(tmp_path):
    original = GenerationRequest(prompt="old", seed=11, steps=3, width=64, height=64, seamless=Seamless.x, batch_size=4)
    path = tmp_path / "prev.png"
    path.write_bytes(images.encode_png(Image.new("RGB", (64, 64)), original, seed=13))
    req = cli.build_request(_args("--from-image", str(path)))
    assert req == original.model_copy(update={"seed": 13, "batch_size": 1})  # exactly image #2 of the batch
    req = cli.build_request(_args("--from-image", str(path), "--prompt", "new", "--seed", "random"), (512, 512))
    assert req.prompt == "new" and req.seed is None and req.seamless is Seamless.x and req.width == 64
    plain = tmp_path / "plain.png"
    _png_file(plain)
    with pytest.raises(InvalidRequest, match="carries no Latent Bridge request"):
        cli.build_request(_args("--from-image", str(plain)))


def test_request_json_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"prompt": "json", "steps": 2}))
    req = cli.build_request(_args("--request", str(path), "--steps", "3"))
    assert req.prompt == "json" and req.steps == 3
    path.write_text(json.dumps({"prompt": "x", "stepz": 2}))
    with pytest.raises(InvalidRequest, match="stepz"):
        cli.build_request(_args("--request", str(path)))


def test_output_paths():
    assert cli.output_paths("out.png", [5]) == [Path("out.png")]
    assert cli.output_paths("d/out.png", [5, 6, 7]) == [Path("d/out.png"), Path("d/out-1.png"), Path("d/out-2.png")]
    assert cli.output_paths("out", [1, 2]) == [Path("out.png"), Path("out-1.png")]
    assert cli.output_paths(None, [3, 4]) == [Path("latentbridge-3.png"), Path("latentbridge-4.png")]


def test_output_folder(tmp_path):
    assert cli.output_paths(str(tmp_path), [3]) == [tmp_path / "latentbridge-3.png"]
    cli.check_output(str(tmp_path))
    cli.check_output(str(tmp_path / "x.png"))
    with pytest.raises(InvalidRequest, match="does not exist"):
        cli.check_output(str(tmp_path / "nope" / "x.png"))


# --- one-line errors, before any model is loaded ---------------------------------------------------


def _fill(arg, files):
    for key, value in files.items():
        arg = arg.replace(key, value)
    return arg


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["generate", "--steps", "abc"], "--steps must be a whole number"),
        (["generate", "--steps", "999"], "steps:"),
        (["generate", "--width", "65"], "width:"),
        (["generate", "--cfg", "nan"], "--cfg must be a finite number"),
        (["generate", "--extend", "1,2"], "--extend needs"),
        (["generate", "--mode", "img2img"], "needs an init image"),
        (["generate", "--init", "{png}", "--mode", "inpaint"], "needs a mask"),
        (["generate", "--init", "{png}", "--mode", "txt2img"], "--init is not used by mode txt2img"),
        (["generate", "--init", "{png}", "--mask", "{png}", "--extend", "0,0,8,0"], "--mask is only used by mode inpaint"),
        (["generate", "--init", "{missing}"], "cannot read it"),
        (["generate", "--init", "{garbage}"], "--init"),
        (["generate", "--init", "{tmp}"], "is a folder"),
        (["generate", "--init", "{png}", "--max-pixels", "100"], "more than the limit"),
        (["generate", "--max-pixels", "lots"], "settings.max_pixels"),
        (["generate", "--vae-tiling", "sometimes"], "settings.vae_tiling"),
        (["generate", "--from-image", "{png}"], "carries no Latent Bridge request"),
        (["generate", "--out", "{missing}/x.png"], "does not exist"),
        (["generate", "--out", "{readonly}/x.png"], "cannot write there"),
        (["generate", "--init", "{png}", "--extend", "-8,0,0,0"], "left must be 0 or more, got -8"),
        (["generate", "--init", "{png}", "--mask", "{small}"], "mask is 32x32 but the init image is 64x64"),
        (["generate", "--init", "{garbage}"], "only PNG, JPEG or WebP images are decoded"),
        (["info", "{png}"], "no Latent Bridge request or A1111 parameters"),
        (["info", "{garbage}"], "not a readable image"),
        (["info", "{missing}"], "cannot read it"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, expected):
    files = {
        "{png}": str(_png_file(tmp_path / "in.png")),
        "{missing}": str(tmp_path / "missing.png"),
        "{garbage}": str(tmp_path / "garbage.png"),
        "{tmp}": str(tmp_path),
        "{small}": str(_mask_file(tmp_path / "small.png", (32, 32))),
        "{readonly}": "/proc",  # exists, and no file can be made there whoever runs the tests
    }
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    argv = [_fill(a, files) for a in argv]
    code, out, err = _run(capsys, *argv)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err and out == ""
    assert " object at 0x" not in err  # names the user's file, never an internal object


def test_usage_errors_are_one_line(capsys):
    for argv in (["generate", "--sampler", "nope"], ["frobnicate"], [], ["generate", "--from-image", "a", "--request", "b"]):
        code, out, err = _run(capsys, *argv)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    code, out, _ = _run(capsys, "generate", "--help")
    assert code == 0 and "--from-image" in out and "--seamless" in out
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.startswith("latentbridge ")


# --- info -----------------------------------------------------------------------------------------


def test_info_prints_request_and_parameters(tmp_path, capsys):
    req = GenerationRequest(prompt="a red cube", negative_prompt="blur", steps=4, seed=3, width=64, height=64)
    path = tmp_path / "r.png"
    path.write_bytes(images.encode_png(Image.new("RGB", (64, 64)), req, seed=3))
    code, out, err = _run(capsys, "info", str(path))
    assert code == 0 and err == ""
    body = out.split("# A1111 parameters\n")
    assert GenerationRequest.model_validate_json(body[0].split("\n", 1)[1]) == req
    assert body[1].startswith("a red cube\nNegative prompt: blur\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64")
    code, out, _ = _run(capsys, "info", "--json", str(path))
    assert code == 0 and GenerationRequest.model_validate_json(out) == req


def test_a_closed_pipe_is_not_an_error(tmp_path, monkeypatch):
    """`latentbridge info x.png | head -1`: the reader leaving early exits 0, silently."""
    path = tmp_path / "r.png"
    path.write_bytes(images.encode_png(Image.new("RGB", (64, 64)), GenerationRequest(seed=3), seed=3))

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    errors = io.StringIO()
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    monkeypatch.setattr(sys, "stderr", errors)
    assert cli.main(["info", str(path)]) == 0
    assert errors.getvalue() == ""


def test_info_reads_a1111_only_images(tmp_path, capsys):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "cat\nSteps: 20, Sampler: Euler a, Seed: 1")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    code, out, _ = _run(capsys, "info", str(path))
    assert code == 0 and out == "# A1111 parameters\ncat\nSteps: 20, Sampler: Euler a, Seed: 1\n"
    code, _, err = _run(capsys, "info", "--json", str(path))
    assert code == 1 and "only A1111 parameters" in err


# --- --server delegates to the SDK -------------------------------------------------------------------


class _FakeClient:
    """Stands in for latentbridge.client.Client: records what the CLI sends, returns PNGs."""

    calls: list = []

    def __init__(self, url, token=None):
        self.url, self.token = url, token

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def generate(self, request, init_image=None, mask=None, on_progress=None, **kwargs):
        type(self).calls.append((self.url, self.token, request, init_image, mask))
        for step in (1, 2):
            on_progress(type("Progress", (), {"step": step, "total": 2})())
        return [
            images.encode_png(Image.new("RGB", (request.width, request.height), (i * 50, 0, 0)), request, seed=100 + i)
            for i in range(request.batch_size)
        ]


def test_server_mode_uses_the_client(tmp_path, capsys, monkeypatch):
    import latentbridge.client

    monkeypatch.setattr(latentbridge.client, "Client", _FakeClient)
    monkeypatch.setenv("LATENTBRIDGE_TOKEN", "from-env")
    _FakeClient.calls = []
    init = _png_file(tmp_path / "in.png")
    out = tmp_path / "o.png"
    code, stdout, err = _run(capsys, "generate", "--server", "http://127.0.0.1:9", "--init", str(init), "--prompt", "x",
                             "--batch", "2", "--steps", "2", "--out", str(out))
    assert code == 0, err
    url, token, request, init_bytes, mask = _FakeClient.calls[0]
    assert url == "http://127.0.0.1:9" and token == "from-env" and mask is None
    assert init_bytes == init.read_bytes()  # the file's own bytes, not a re-encoding
    assert request.mode is Mode.img2img and request.model is None  # the server's loaded model
    assert stdout.split() == [str(out), str(tmp_path / "o-1.png")]
    assert images.read_png_request(tmp_path / "o-1.png").seed == 101
    assert "seed 101" in err
    code, _, _ = _run(capsys, "generate", "--server", "http://h", "--token", "T", "-q", "--out", str(out))
    assert code == 0 and _FakeClient.calls[-1][1] == "T"


def test_server_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import latentbridge.client
    from latentbridge.protocol import UnknownModel

    class Refusing(_FakeClient):
        def generate(self, *a, **k):
            raise UnknownModel("model 'x' is not in the server's model_dirs")

    class Unreachable(_FakeClient):
        def __init__(self, url, token=None):
            raise ConnectionRefusedError(111, "Connection refused")

    for fake, expected in ((Refusing, "error: model 'x' is not in the server's model_dirs"),
                           (Unreachable, "error: Connection refused")):
        monkeypatch.setattr(latentbridge.client, "Client", fake)
        code, out, err = _run(capsys, "generate", "--server", "http://h", "-q", "--out", str(tmp_path / "o.png"))
        assert code == 1 and err.strip() == expected and out == ""


def test_serve_refuses_unsafe_settings_in_one_line(capsys):
    code, out, err = _run(capsys, "serve", "--host", "0.0.0.0", "--port", "0")
    assert code == 1 and err.startswith("error: ") and "token" in err and len(err.splitlines()) == 1
    code, out, err = _run(capsys, "serve", "--port", "http")
    assert code == 1 and err.strip() == "error: settings.port: Input should be a valid integer, unable to parse string as an integer"


# --- real generation with the tiny model -----------------------------------------------------------


def _tiny(*argv):
    return ["generate", "--model", "tiny", "--steps", "2", "--width", "64", "--height", "64", "--sampler", "euler", *argv]


def test_generate_txt2img_batch_and_regenerate(tmp_path, capsys):
    out = tmp_path / "out.png"
    code, stdout, err = _run(capsys, *_tiny("--prompt", "a cube", "--seed", "7", "--batch", "2", "--seamless", "x",
                                            "--out", str(out)))
    assert code == 0, err
    assert stdout.split() == [str(out), str(tmp_path / "out-1.png")]
    assert "Traceback" not in err and "seed 8" in err
    first, second = (images.read_png_request(p) for p in (out, tmp_path / "out-1.png"))
    assert (first.seed, second.seed, first.batch_size) == (7, 8, 1)
    assert first.prompt == "a cube" and first.seamless is Seamless.x and first.model == "tiny"
    assert "Seed: 8" in images.read_png_text(tmp_path / "out-1.png")["parameters"]
    with Image.open(out) as im:
        assert im.size == (64, 64)

    # The second image regenerated alone from its own metadata: the same image. (Not always
    # bit-identical: CPU kernels may round a batch of 2 and a batch of 1 differently, by 1/255.)
    again = tmp_path / "again.png"
    code, stdout, err = _run(capsys, "generate", "--from-image", str(tmp_path / "out-1.png"), "-q", "--out", str(again))
    assert code == 0 and err == "", err
    pixels = lambda p: np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)  # noqa: E731
    assert np.abs(pixels(again) - pixels(tmp_path / "out-1.png")).max() <= 2
    assert np.abs(pixels(out) - pixels(tmp_path / "out-1.png")).mean() > 10  # seeds 7 and 8 differ
    # A single image regenerated from its metadata: bit-identical.
    twice = tmp_path / "twice.png"
    code, _, err = _run(capsys, "generate", "--from-image", str(again), "-q", "--out", str(twice))
    assert code == 0, err
    assert np.array_equal(pixels(twice), pixels(again))


def test_generate_inpaint(tmp_path, capsys):
    init = _png_file(tmp_path / "in.png", seed=3)
    mask = _mask_file(tmp_path / "m.png")
    out = tmp_path / "inpaint.png"
    code, _, err = _run(capsys, *_tiny("--init", str(init), "--mask", str(mask), "--seed", "1", "--strength", "0.6",
                                       "--mask-blur", "0", "-q", "--out", str(out)))
    assert code == 0, err
    req = images.read_png_request(out)
    assert req.mode is Mode.inpaint and req.strength == 0.6 and req.mask.blur == 0
    result = np.asarray(Image.open(out).convert("RGB"))
    original = np.asarray(Image.open(init).convert("RGB"))
    assert np.array_equal(result[:16], original[:16])  # outside the mask: the original, exactly
    assert not np.array_equal(result[16:48, 16:48], original[16:48, 16:48])  # inside: repainted


def test_engine_errors_are_one_line(tmp_path, capsys):
    code, out, err = _run(capsys, "generate", "--model", str(tmp_path / "no-such-model"), "-q")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "tiny" in lines[0], err
    code, out, err = _run(capsys, *_tiny("--lora", str(tmp_path / "missing.safetensors:0.5"), "-q", "--out", str(tmp_path / "x.png")))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "missing.safetensors" in lines[0], err
    assert not (tmp_path / "x.png").exists()


def test_python_m_latentbridge(tmp_path):
    """The real entry point, as a user runs it: an outpaint, its exit code, stdout and file."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "backend"))
    init = _png_file(tmp_path / "in.png", seed=4)
    out = tmp_path / "wide.png"
    run = subprocess.run([sys.executable, "-m", "latentbridge", *_tiny("--init", str(init), "--extend", "0,0,64,0",
                                                                      "--seed", "5", "--out", str(out))],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out) and "Traceback" not in run.stderr
    req = images.read_png_request(out)
    assert req.mode is Mode.outpaint and req.seed == 5 and req.outpaint.right == 64
    with Image.open(out) as im:
        assert im.size == (128, 64)
        assert np.array_equal(np.asarray(im.convert("RGB"))[:, :64], np.asarray(Image.open(init)))  # kept exactly
    run = subprocess.run([sys.executable, "-m", "latentbridge", "info", str(tmp_path / "nope.png")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 1 and run.stderr.startswith("error: ") and len(run.stderr.splitlines()) == 1


@pytest.fixture
def live_server(tmp_path):
    """A real server (tiny model) on a free port, in this process, on its own event loop thread."""
    from aiohttp import web

    from latentbridge.server import create_app

    app = create_app(Settings(model="tiny", port=0, data_dir=tmp_path / "data"))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    ready = threading.Event()
    port = []

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port.append(runner.addresses[0][1])
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(60)
    yield f"http://127.0.0.1:{port[0]}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(60)


def test_generate_on_a_real_server(live_server, tmp_path, capsys):
    out = tmp_path / "remote.png"
    code, stdout, err = _run(capsys, *_tiny("--server", live_server, "--seed", "21", "--batch", "2", "--prompt", "moss",
                                            "--out", str(out)))
    assert code == 0, err
    assert stdout.split() == [str(out), str(tmp_path / "remote-1.png")]
    assert "seed 22" in err and "Traceback" not in err
    remote = images.read_png_request(tmp_path / "remote-1.png")
    assert (remote.seed, remote.prompt, remote.steps, remote.model) == (22, "moss", 2, "tiny")
    code, _, err = _run(capsys, "generate", "--server", live_server, "--model", "no-such-model", "-q")
    assert code == 1 and err.startswith("error: ") and "no-such-model" in err and len(err.splitlines()) == 1


def test_interrupt_and_unexpected_errors(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    def broken(args):
        raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")

    monkeypatch.setattr(cli, "_cmd_info", interrupted)
    assert _run(capsys, "info", "x.png")[::2] == (130, "error: interrupted\n")
    monkeypatch.setattr(cli, "_cmd_info", broken)
    code, _, err = _run(capsys, "info", "x.png")
    assert code == 1 and err == "error: RuntimeError: CUDA error: an illegal memory access was encountered (run with --debug for the traceback)\n"
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "info", "x.png"])


def test_option_values_may_start_with_a_dash(tmp_path):
    args = cli.build_parser().parse_args(cli._join_dash_values(cli.build_parser(),
                                         ["generate", "--negative", "-blurry, -text", "--extend", "-8,0,0,0", "-q"]))
    assert args.negative == "-blurry, -text" and args.extend == "-8,0,0,0" and args.quiet


def test_quiet_silences_library_warnings(tmp_path):
    """-q: nothing on stderr at all, not even a library's warning (DPM++ SDE's torchsde warns)."""
    out = tmp_path / "q.png"
    result = subprocess.run(
        [sys.executable, "-m", "latentbridge", "generate", "--model", "tiny", "--prompt", "x", "-W", "64", "-H", "64",
         "--steps", "2", "--sampler", "dpmpp_sde_karras", "--out", str(out), "-q"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.strip() == str(out)


def test_results_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        cli.write_file_atomic(tmp_path / "a.png", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o640


def test_bench_errors_are_one_line_with_the_cli_exit_codes(capsys):
    code, out, err = _run(capsys, "bench", "--runs", "x")
    assert code == 2 and err.strip().splitlines() == ["error: argument --runs: expected a whole number, got 'x' "
                                                      "(see `latentbridge bench --help`)"]
    code, out, err = _run(capsys, "bench", "--model", "no-such-model", "--runs", "1")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: the bench model failed to load: unknown model")
