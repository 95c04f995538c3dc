"""The `latentbridge` command: serve | generate | info | bench.

    latentbridge serve [settings flags]
    latentbridge generate --model tiny --prompt "bronze" --seamless xy --out bronze.png
    latentbridge generate --server http://host:7423 --token T --prompt "bronze"
    latentbridge info result.png

Every failure the user can cause (a bad flag value, an unreadable image, a model that cannot
be loaded) is reported as ONE line on stderr, `error: ...`, with a non-zero exit status; a
traceback is shown only with `--debug`. Heavy modules (torch via the engine, aiohttp via the
server and client) are imported only by the sub-command that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from typing import NoReturn, Sequence

from pydantic import ValidationError

from . import images
from .cli_inputs import (  # noqa: F401 - parse_* and output_paths are part of this module's surface
    _read_file,
    _read_image,
    build_request,
    check_output,
    output_paths,
    parse_control,
    parse_extent,
    parse_lora,
    parse_seed,
    write_file_atomic,
)
from .protocol import GenerationRequest, InvalidRequest, LatentBridgeError, MissingImage, Mode, Sampler, Seamless, error_from_validation
from .settings import Settings, add_settings_arguments, load_settings

PROG = "latentbridge"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Settings that matter to a local `generate` (the server-only ones belong to `serve`).
ENGINE_SETTINGS = [
    "model",
    "model_config_dir",
    "model_dirs",
    "lora_dirs",
    "upscaler_dirs",
    "embedding_dirs",
    "vae_dirs",
    "device",
    "dtype",
    "allow_pickle",
    "vae_slicing",
    "vae_tiling",
    "cpu_offload",
    "controlnet_dirs",
    "controlnet_models",
    "ip_adapter",
    "depth_estimator",
    "segmentation_estimator",
    "taesd",
    "offline",
    "max_pixels",
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error: ...` line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


# ---------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """A tqdm bar on stderr fed with (step, total); nothing at all with --quiet."""

    def __init__(self, quiet: bool, desc: str, total: int | None = None):
        self._bar = None
        if not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=True, dynamic_ncols=True)

    def update(self, step: int, total: int) -> None:
        if self._bar is None:
            return
        if self._bar.total != total:
            self._bar.total = total
        self._bar.n = step
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Sub-commands


def _cmd_generate(args: argparse.Namespace) -> int:
    if not args.debug:
        _quiet_libraries()
    with _silenced(args.quiet and not args.debug):
        return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    # Settings first: a bad setting is reported before any file is read or model loaded.
    settings = _settings(args)
    check_output(args.out)
    max_pixels = settings.max_pixels
    init_bytes = init_image = mask_bytes = mask_image = None
    if args.init:
        init_bytes, init_image = _read_image(args.init, "--init", max_pixels)
    if args.mask:
        mask_bytes, mask_image = _read_image(args.mask, "--mask", max_pixels)
    images.check_mask_size(init_image, mask_image)  # the server's own check, before any model loads
    extra_bytes, extra_images = {}, {}  # control.<i>, reference.<i>
    for role, path, flag in ([(f"control.{i}", parse_control(t)[1], "--control") for i, t in enumerate(args.control or [])]
                             + [(f"reference.{i}", p, "--reference") for i, p in enumerate(args.reference or [])]):
        extra_bytes[role], extra_images[role] = _read_image(path, flag, max_pixels)
    request = build_request(args, init_image.size if init_image is not None else None)
    if request.needs_init_image() and init_image is None:
        raise MissingImage(f"mode {request.mode.value} needs an init image: pass --init IMAGE", field="init")
    if request.needs_mask() and mask_image is None:
        raise MissingImage("mode inpaint needs a mask: pass --mask IMAGE (white = repaint)", field="mask")
    # An image the mode would silently ignore is a mistake worth saying out loud.
    if init_image is not None and not request.needs_init_image():
        raise InvalidRequest(f"--init is not used by mode {request.mode.value} (use --mode img2img)", field="init")
    if mask_image is not None and not request.needs_mask():
        raise InvalidRequest(f"--mask is only used by mode inpaint, not {request.mode.value}", field="mask")

    if args.server:
        pngs = _generate_remote(args, request, init_bytes, mask_bytes, extra_bytes)
        seeds = [_png_seed(png, request, i) for i, png in enumerate(pngs)]
    else:
        pngs, seeds = _generate_local(args, settings, request, init_image, mask_image, extra_images)
    for path, png, seed in zip(output_paths(args.out, seeds), pngs, seeds):
        write_file_atomic(path, png)
        print(path)  # stdout: one path per line, for scripts
        _say(args, f"wrote {path} (seed {seed})")
    return EXIT_OK


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args)
    except ValidationError as exc:
        raise error_from_validation(exc, prefix="settings") from None


def _quiet_libraries() -> None:
    """Keep transformers/diffusers notices (optional backends, deprecations) off a CLI's stderr;
    an explicit environment setting or --debug keeps them."""
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(name, "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@contextlib.contextmanager
def _silenced(silent: bool):
    """-q: no library warning, log line or progress bar while the command runs, only errors;
    everything as it was afterwards (main() may run inside a bigger program, e.g. a test)."""
    if not silent:
        yield
        return
    progress_bars = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    disabled = logging.root.manager.disable
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
        if progress_bars is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = progress_bars


def _generate_local(args, settings: Settings, request: GenerationRequest, init_image, mask_image,
                    extra: dict) -> tuple[list[bytes], list[int]]:
    from .engine import Engine  # torch + diffusers: only when generating here

    if request.model is None:
        request = request.model_copy(update={"model": settings.model})
    # The request's model (from --model or --from-image) is the one to load; local=True: the
    # user may name any file or folder, not only those inside configured model folders.
    engine = Engine(settings.model_copy(update={"model": request.model}), local=True)
    _say(args, f"loading model {request.model} ...")
    engine.load()
    mask = images.mask_channel(mask_image) if mask_image is not None else None
    progress = _Progress(args.quiet, "generating", request.steps)
    try:
        # Ctrl-C raises KeyboardInterrupt right here (main thread): no cancel event needed.
        result = engine.generate(
            request,
            init_image=init_image,
            mask=mask,
            on_step=lambda update: progress.update(update.step, update.total),
            inputs=extra,
        )
    finally:
        progress.close()
    pngs = [images.encode_png(image, result.request, seed=seed) for image, seed in zip(result.images, result.seeds)]
    return pngs, list(result.seeds)


def _generate_remote(args, request: GenerationRequest, init_bytes: bytes | None, mask_bytes: bytes | None,
                     extra: dict[str, bytes]) -> list[bytes]:
    from .client import Client  # aiohttp: only when talking to a server

    token = args.token or os.environ.get("LATENTBRIDGE_TOKEN") or None
    progress = _Progress(args.quiet, "generating", request.steps)
    try:
        with Client(args.server, token) as client:
            return client.generate(request, init_image=init_bytes, mask=mask_bytes, images=extra,
                                   on_progress=lambda event: progress.update(event.step, event.total))
    finally:
        progress.close()


def _png_seed(png: bytes, request: GenerationRequest, index: int) -> int:
    """The seed a server result was made with (from its embedded request)."""
    try:
        embedded = images.read_png_request(png)
    except LatentBridgeError:
        embedded = None
    if embedded is not None and embedded.seed is not None:
        return embedded.seed
    return (request.seed or 0) + index


def _cmd_info(args: argparse.Namespace) -> int:
    data = _read_file(args.image, None)
    text = images.read_png_text(data)
    request = images.read_png_request(data)
    parameters = text.get(images.PARAMETERS_CHUNK)
    if request is None and parameters is None:
        raise InvalidRequest(f"{args.image}: no Latent Bridge request or A1111 parameters embedded", field="image")
    if args.json:
        if request is None:
            raise InvalidRequest(f"{args.image}: no Latent Bridge request embedded (only A1111 parameters)", field="image")
        print(request.model_dump_json(indent=2))
        return EXIT_OK
    if request is not None:
        print("# Latent Bridge request (regenerate with `latentbridge generate --from-image IMAGE`)")
        print(request.model_dump_json(indent=2))
        print()
        parameters = images.a1111_parameters(request, request.seed) if parameters is None else parameters
    print("# A1111 parameters")
    print(parameters)
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not args.debug:
        _quiet_libraries()
    from .server import StartupRefused, run  # aiohttp: only when serving

    try:
        run(settings)
    except StartupRefused as exc:  # unsafe settings (e.g. no token beyond loopback): the user's to fix
        raise InvalidRequest(str(exc), field="settings") from None
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from .bench import main as bench_main
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.bench":
            raise
        raise LatentBridgeError("benchmarks are not part of this installation (no latentbridge.bench module)") from None
    try:
        return int(bench_main(list(args.bench_args)) or 0)
    except SystemExit as exc:  # the bench's own argparse: --help or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


# ---------------------------------------------------------------------------------------------
# Parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PROG)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Latent Bridge: a local Stable Diffusion backend for Blender and other tools.")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="Run the websocket + HTTP server", description="Run the server. "
                           "Every setting can also come from a LATENTBRIDGE_<NAME> environment variable.")
    add_settings_arguments(serve)
    serve.set_defaults(func=_cmd_serve)

    gen = sub.add_parser("generate", help="Generate images here (or on a --server)",
                         description="Generate images with the local engine, or on a server with --server.")
    req = gen.add_argument_group("request")
    req.add_argument("--mode", choices=[m.value for m in Mode], help="Default: from the images given "
                     "(--extend → outpaint, --mask → inpaint, --init → img2img, else txt2img)")
    req.add_argument("--prompt", "-p", help="What to generate")
    req.add_argument("--negative", "-n", help="Negative prompt")
    req.add_argument("--seed", "-s", help="Seed (0..2^32-1); `random` for a new one (default: random)")
    req.add_argument("--steps", help="Denoising steps (default 20)")
    req.add_argument("--cfg", "--guidance", dest="cfg", help="Guidance scale (default 7)")
    req.add_argument("--strength", help="img2img/inpaint/outpaint denoising strength 0..1 (default 0.75)")
    req.add_argument("--width", "-W", help="Width in pixels, multiple of 8 (default 512, or the init image's)")
    req.add_argument("--height", "-H", help="Height in pixels, multiple of 8 (default 512, or the init image's)")
    req.add_argument("--sampler", choices=[s.value for s in Sampler], help="Sampler (default euler_a)")
    req.add_argument("--batch", "-b", help="Images per run (seeds SEED, SEED+1, ...)")
    req.add_argument("--seamless", choices=[s.value for s in Seamless], help="Tile on x, y or both")
    req.add_argument("--extend", metavar="L,T,R,B", help="Outpaint: pixels to add left,top,right,bottom")
    req.add_argument("--lora", action="append", metavar="NAME[:WEIGHT]", help="LoRA file and weight (repeatable)")
    req.add_argument("--control", action="append", metavar="TYPE:IMAGE[:WEIGHT[:PREPROCESSOR]]",
                     help="ControlNet unit: depth, normal, canny, lineart, segmentation, ... and its map (repeatable)")
    req.add_argument("--reference", action="append", metavar="IMAGE", help="Reference image for style/subject "
                     "(IP-Adapter; repeatable)")
    req.add_argument("--reference-weight", metavar="W", help="How strongly the references steer (default 0.6)")
    req.add_argument("--reference-model", metavar="NAME", help="IP-Adapter for the references (default: --ip-adapter, "
                     "or the built-in one of a built-in model)")
    req.add_argument("--mask-blur", help="Mask feather radius in pixels (default 4)")
    req.add_argument("--invert-mask", action="store_true", help="Repaint the black part of the mask instead")
    req.add_argument("--only-masked", action="store_true", help="Inpaint a crop around the mask at full resolution")
    req.add_argument("--mask-padding", help="Context pixels around the mask with --only-masked (default 32)")
    src = gen.add_argument_group("input and output")
    src.add_argument("--init", "-i", metavar="IMAGE", help="Init image (img2img, inpaint, outpaint)")
    src.add_argument("--mask", "-m", metavar="IMAGE", help="Mask image, white = repaint (alpha is used when not opaque)")
    base = src.add_mutually_exclusive_group()
    base.add_argument("--from-image", metavar="PNG", help="Start from the request embedded in an earlier result")
    base.add_argument("--request", metavar="JSON", help="Start from a GenerationRequest JSON file")
    src.add_argument("--out", "-o", metavar="PNG", help="Output file; a batch adds -1, -2... (default latentbridge-SEED.png)")
    src.add_argument("--quiet", "-q", action="store_true", help="No progress bar or messages on stderr")
    remote = gen.add_argument_group("remote server")
    remote.add_argument("--server", metavar="URL", help="Generate on this server instead of here")
    remote.add_argument("--token", help="Bearer token for --server (default: $LATENTBRIDGE_TOKEN)")
    engine = gen.add_argument_group("engine settings (local generation)")
    add_settings_arguments(engine, fields=ENGINE_SETTINGS)
    gen.set_defaults(func=_cmd_generate)

    info = sub.add_parser("info", help="Show the request and parameters embedded in a result PNG")
    info.add_argument("image", metavar="IMAGE")
    info.add_argument("--json", action="store_true", help="Print only the request JSON")
    info.set_defaults(func=_cmd_info)

    # Everything after `bench` goes to the bench's own parser (see `main`).
    bench = sub.add_parser("bench", help="Run the benchmarks (`latentbridge bench --help`)", add_help=False)
    bench.set_defaults(func=_cmd_bench, bench_args=[])
    return parser


def _split_bench(argv: list[str]) -> list[str] | None:
    """The arguments after a `bench` command word (passed on untouched), or None."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return argv[i + 1 :] if arg == "bench" else None
    return None


def _join_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--extend -8,0,0,0` → `--extend=-8,0,0,0`: argparse takes any word starting with `-` for an
    option (unless it is a plain number), so an option's value could not start with a dash
    (`--negative "-blurry"` neither). A word after an option that takes a value is its value."""
    takes_value: set[str] = set()
    known: set[str] = set()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:  # argparse keeps no public list of them
            known.update(action.option_strings)
            if action.option_strings and action.nargs is None and action.const is None:
                takes_value.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
    out, i = [], 0
    while i < len(argv):
        word = argv[i]
        if word in takes_value and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1] not in known:
            out.append(f"{word}={argv[i + 1]}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `latentbridge` console script; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args = _split_bench(argv)
    if bench_args is None:
        argv = _join_dash_values(parser, argv)
    try:
        args = parser.parse_args(argv if bench_args is None else argv[: len(argv) - len(bench_args)])
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if bench_args is not None:
        args.bench_args = bench_args
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`latentbridge info x.png | head`): not an error
        sys.stdout = open(os.devnull, "w")  # so the interpreter's final flush stays quiet too
        return EXIT_OK
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {_describe(exc)}", file=sys.stderr)
        return EXIT_ERROR


def _describe(exc: Exception) -> str:
    """One line for any failure: typed errors as they are, the rest with their kind."""
    if isinstance(exc, LatentBridgeError):
        return _one_line(exc.message)
    if isinstance(exc, ValidationError):
        return _one_line(error_from_validation(exc).message)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return _one_line(f"{where}{exc.strerror or exc}")
    # Not an error the user caused (a bug, a torch failure): still no traceback without --debug.
    return _one_line(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
