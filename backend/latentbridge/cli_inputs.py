"""What `latentbridge generate`'s flags describe: flag values, the GenerationRequest, and the
input and output files (read and checked before any model loads). Errors are typed and name the
flag and the user's file."""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from . import images
from .protocol import (
    MAX_SEED,
    MAX_SIDE,
    ControlUnit,
    GenerationRequest,
    InvalidRequest,
    LatentBridgeError,
    LoraSpec,
    Mode,
    OutpaintExtent,
    error_from_validation,
    parse_request,
)
from .store import atomic_write

# ---------------------------------------------------------------------------------------------
# Flag values


def parse_lora(text: str) -> LoraSpec:
    """`NAME[:WEIGHT]` → LoraSpec. Only a trailing `:number` is a weight, so `C:\\x.safetensors`
    and names containing colons still work."""
    name, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
            name = head
        except ValueError:
            pass
    try:
        return LoraSpec(name=name, weight=weight)
    except ValidationError as exc:
        raise error_from_validation(exc, prefix="lora") from None


def parse_control(text: str) -> tuple[ControlUnit, str]:
    """`TYPE:IMAGE[:WEIGHT[:PREPROCESSOR]]` → (ControlUnit, image path). `depth:passes/depth.png:0.8`;
    `canny:photo.jpg:1:canny` turns a photo into its edge map first."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise InvalidRequest(f"--control needs TYPE:IMAGE[:WEIGHT[:PREPROCESSOR]], got {text!r}", field="controls")
    fields: dict[str, Any] = {"type": kind.strip()}
    parts = rest.split(":")
    path = parts[0]
    if len(parts) > 1 and parts[1]:
        fields["weight"] = _number(parts[1], "--control weight", float)
    if len(parts) > 2 and parts[2]:
        fields["preprocessor"] = parts[2]
    if len(parts) > 3 or not path:
        raise InvalidRequest(f"--control needs TYPE:IMAGE[:WEIGHT[:PREPROCESSOR]], got {text!r}", field="controls")
    try:
        return ControlUnit(**fields), path
    except ValidationError as exc:
        raise error_from_validation(exc, prefix="--control") from None


def parse_extent(text: str) -> OutpaintExtent:
    """`LEFT,TOP,RIGHT,BOTTOM` in pixels → OutpaintExtent."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise InvalidRequest(f"--extend needs LEFT,TOP,RIGHT,BOTTOM (4 numbers), got {text!r}", field="outpaint")
    try:
        left, top, right, bottom = (int(p) for p in parts)
    except ValueError:
        raise InvalidRequest(f"--extend values must be whole numbers of pixels, got {text!r}", field="outpaint") from None
    for side, value in zip(("left", "top", "right", "bottom"), (left, top, right, bottom)):
        if value < 0:
            raise InvalidRequest(f"--extend adds pixels: {side} must be 0 or more, got {value}", field=f"outpaint.{side}")
    try:
        return OutpaintExtent(left=left, top=top, right=right, bottom=bottom)
    except ValidationError as exc:
        raise error_from_validation(exc, prefix="outpaint") from None


def parse_seed(text: str) -> int | None:
    """A seed, or None for `random` / -1 (a new random seed, e.g. to vary a --from-image)."""
    if text.strip().lower() in ("random", "-1"):
        return None
    try:
        seed = int(text)
    except ValueError:
        raise InvalidRequest(f"--seed must be a whole number or `random`, got {text!r}", field="seed") from None
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"--seed must be between 0 and {MAX_SEED}", field="seed")
    return seed


def _number(text: str, flag: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InvalidRequest(f"{flag} must be {what}, got {text!r}", field=flag.lstrip("-")) from None
    if kind is float and not math.isfinite(value):
        raise InvalidRequest(f"{flag} must be a finite number, got {text!r}", field=flag.lstrip("-"))
    return value


# ---------------------------------------------------------------------------------------------
# The request


def _base_request(args: argparse.Namespace) -> dict[str, Any]:
    """The request to start from: an earlier result's embedded request, a JSON file, or defaults."""
    if args.from_image:
        embedded = images.read_png_request(_read_file(args.from_image, "--from-image"))
        if embedded is None:
            raise InvalidRequest(f"--from-image {args.from_image}: the image carries no Latent Bridge request", field="from_image")
        return embedded.model_dump(mode="json")
    if args.request:
        try:
            data = json.loads(_read_file(args.request, "--request"))
        except ValueError:
            raise InvalidRequest(f"--request {args.request}: not valid JSON", field="request") from None
        return parse_request(data).model_dump(mode="json")
    return {}


def _snap_size(pixels: int) -> int:
    """An image side as a request size: rounded down to a multiple of 8, within 64..MAX_SIDE."""
    return max(64, min(MAX_SIDE, pixels // 8 * 8))


def build_request(args: argparse.Namespace, init_size: tuple[int, int] | None = None) -> GenerationRequest:
    """The GenerationRequest the flags describe (flags override --from-image / --request).

    Without --mode the mode follows from the images given: --extend → outpaint, --mask →
    inpaint, --init → img2img, else txt2img. Without --width/--height an init image sets the
    size (rounded down to a multiple of 8); with one of them, the other keeps its aspect.
    """
    data = _base_request(args)
    based = bool(data)
    if args.mode:
        data["mode"] = args.mode
    elif not based:
        if args.extend:
            data["mode"] = Mode.outpaint.value
        elif args.mask:
            data["mode"] = Mode.inpaint.value
        elif args.init:
            data["mode"] = Mode.img2img.value
    simple = {
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "steps": None if args.steps is None else _number(args.steps, "--steps", int),
        "guidance": None if args.cfg is None else _number(args.cfg, "--cfg", float),
        "strength": None if args.strength is None else _number(args.strength, "--strength", float),
        "width": None if args.width is None else _number(args.width, "--width", int),
        "height": None if args.height is None else _number(args.height, "--height", int),
        "sampler": args.sampler,
        "batch_size": None if args.batch is None else _number(args.batch, "--batch", int),
        "seamless": args.seamless,
    }
    data.update({k: v for k, v in simple.items() if v is not None})
    if args.seed is not None:
        data["seed"] = parse_seed(args.seed)
    if args.model is not None:
        data["model"] = args.model
    if init_size is not None and not based:
        iw, ih = init_size
        if args.width is None and args.height is None:
            data["width"], data["height"] = _snap_size(iw), _snap_size(ih)
        elif args.height is None:  # one side given: the other keeps the init image's aspect
            data["height"] = _snap_size(round(data["width"] * ih / iw))
        elif args.width is None:
            data["width"] = _snap_size(round(data["height"] * iw / ih))
    mask = dict(data.get("mask") or {})
    if args.mask_blur is not None:
        mask["blur"] = _number(args.mask_blur, "--mask-blur", int)
    if args.invert_mask:
        mask["invert"] = True
    if args.only_masked:
        mask["only_masked"] = True
    if args.mask_padding is not None:
        mask["padding"] = _number(args.mask_padding, "--mask-padding", int)
    if mask:
        data["mask"] = mask
    if args.extend:
        data["outpaint"] = parse_extent(args.extend).model_dump()
    if args.lora:
        data["loras"] = [parse_lora(text).model_dump() for text in args.lora]
    if args.control:
        data["controls"] = [parse_control(text)[0].model_dump(exclude_unset=True) for text in args.control]
    if args.reference:
        reference = {"images": len(args.reference)}
        if args.reference_weight is not None:
            reference["weight"] = _number(args.reference_weight, "--reference-weight", float)
        if args.reference_model:
            reference["model"] = args.reference_model
        data["reference"] = reference
    elif args.reference_weight is not None or args.reference_model:
        flag = "--reference-weight" if args.reference_weight is not None else "--reference-model"
        raise InvalidRequest(f"{flag} needs the reference images: pass --reference IMAGE", field="reference")
    return parse_request(data)


def output_paths(out: str | None, seeds: Sequence[int]) -> list[Path]:
    """Where each image goes: OUT, OUT-1, OUT-2... for a batch (same suffix, .png by default);
    `latentbridge-SEED.png` in the current folder without --out, or in OUT when it is a folder."""
    if not out or Path(out).is_dir():
        folder = Path(out or "")
        return [folder / f"latentbridge-{seed}.png" for seed in seeds]
    path = Path(out)
    if not path.suffix:
        path = path.with_suffix(".png")
    return [path if i == 0 else path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(len(seeds))]


# ---------------------------------------------------------------------------------------------
# Files


def _read_file(path: str, flag: str | None) -> bytes:
    label, field = (f"{flag} {path}", flag.lstrip("-")) if flag else (path, None)
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise InvalidRequest(f"{label}: is a folder, not a file", field=field) from None
    except OSError as exc:
        raise InvalidRequest(f"{label}: cannot read it ({exc.strerror or exc})", field=field) from None


def _read_image(path: str, flag: str, max_pixels: int | None):
    """(bytes, decoded PIL image) of an input image; errors name the flag and the file."""
    data = _read_file(path, flag)
    try:
        return data, images.decode_image(data, max_pixels=max_pixels)
    except LatentBridgeError as exc:
        exc.message = f"{flag} {path}: {exc.message}"
        exc.args = (exc.message,)
        exc.field = flag.lstrip("-")
        raise


def check_output(out: str | None) -> None:
    """Refuse an --out that cannot be written before generating, not after: its folder must exist
    and take a new file (tried for real: permissions alone do not tell, e.g. on /proc or a
    read-only mount)."""
    folder = Path(out or ".")
    if out and not folder.is_dir():
        folder = folder.parent
        if not folder.is_dir():
            raise InvalidRequest(f"--out {out}: the folder {folder} does not exist", field="out")
    label = f"--out {out}" if out else "the current folder"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InvalidRequest(f"{label}: cannot write there ({exc.strerror or exc})", field="out") from None


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder (a reader never sees half a PNG), with the
    permissions the user's umask gives any new file."""
    try:
        atomic_write(path if str(path.parent) else Path(".") / path, data)
    except OSError as exc:
        raise InvalidRequest(f"cannot write {path}: {exc.strerror or exc}", field="out") from None
