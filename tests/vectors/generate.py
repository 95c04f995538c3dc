"""Write the shared wire-format test vectors from `latentbridge.protocol`.

Run from the repository root:  python tests/vectors/generate.py
The output files are committed; the backend tests (tests/server/test_vectors.py) and the Blender
add-on's tests read them. Re-run after a protocol change and review the diff.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path

from PIL import Image, ImageDraw

from latentbridge.protocol import (
    AcceptedEvent,
    AttachMessage,
    BinaryHeader,
    CancelledEvent,
    CancelMessage,
    Capabilities,
    ControlType,
    ControlUnit,
    ReferenceImages,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    GenerationRequest,
    HelloEvent,
    ModelEvent,
    HelloMessage,
    Limits,
    MaskOptions,
    Mode,
    ModelState,
    ModelStatus,
    PingMessage,
    PongEvent,
    PreviewEvent,
    ProgressEvent,
    ResultEvent,
    Sampler,
    Seamless,
    StartedEvent,
    StatusEvent,
    JobState,
    LiveCounts,
    LiveOptions,
    LivePreset,
    LiveStartedEvent,
    LiveStartMessage,
    LiveStopMessage,
    LiveStoppedEvent,
    LiveUpdatedEvent,
    LiveUpdateMessage,
    Schedule,
    SubmitMessage,
    encode_binary_frame,
)

HERE = Path(__file__).resolve().parent
JOB_ID = "3f2a9c1e7b6d4e5f8a9b0c1d2e3f4a5b"
LIVE_ID = "live-7c1e3f2a9b6d4e5f8a9b0c1d"


def live_request(**fields) -> GenerationRequest:
    """The request of the live vectors: img2img of each frame with a depth unit."""
    values = dict(mode=Mode.img2img, prompt="weathered bronze", seed=42, width=64, height=64, strength=0.5,
                  controls=[ControlUnit(type=ControlType.depth, weight=0.8)])
    values.update(fields)
    return GenerationRequest(**values)


def tiny_rgb_png() -> bytes:
    image = Image.new("RGB", (64, 64), (40, 90, 160))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(220, 180, 60))
    return _save(image, "PNG")


def tiny_mask_png() -> bytes:
    image = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill=255)
    return _save(image, "PNG")


def tiny_preview_jpeg() -> bytes:
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    ImageDraw.Draw(image).rectangle((8, 8, 23, 23), fill=(200, 40, 40))
    return _save(image, "JPEG", quality=80)


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _json(model, *, exclude_unset: bool = False) -> str:
    data = model.model_dump(mode="json", exclude_unset=exclude_unset)
    if "type" in type(model).model_fields:
        data["type"] = model.type  # always on the wire, even where it is the default
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def client_vectors() -> dict[str, str]:
    txt2img = GenerationRequest(mode=Mode.txt2img, prompt="weathered bronze, verdigris", negative_prompt="blurry",
                                seed=1234, steps=4, guidance=7.0, width=64, height=64, sampler=Sampler.euler_a,
                                seamless=Seamless.xy)
    inpaint = GenerationRequest(mode=Mode.inpaint, prompt="a red door", seed=7, steps=4, width=64, height=64,
                                strength=0.8, mask=MaskOptions(blur=4, invert=False, only_masked=False, padding=32))
    controlled = GenerationRequest(
        mode=Mode.img2img, prompt="a bronze statue", seed=11, steps=4, width=64, height=64, strength=0.6,
        controls=[ControlUnit(type=ControlType.depth, weight=0.8, end=0.9),
                  ControlUnit(type=ControlType.normal, model="tiny-controlnet", weight=0.5, mode="prompt")],
        reference=ReferenceImages(images=1, weight=0.6))
    # Client frames carry only the fields a client sets (exclude_unset), as a real client sends them.
    return {
        "submit_control.json": _json(SubmitMessage(client_ref="req-3", request=controlled, images={
            "init": "up-init-1", "control.0": "up-depth-1", "control.1": "up-normal-1", "reference.0": "up-ref-1"}),
            exclude_unset=True),
        "hello.json": _json(HelloMessage(protocol=1, client="blender-latentbridge/0.1.0"), exclude_unset=True),
        "hello_token.json": _json(HelloMessage(protocol=1, client="script", token="s3cret-token"), exclude_unset=True),
        "submit_txt2img.json": _json(SubmitMessage(client_ref="req-1", request=txt2img, priority="interactive"),
                                     exclude_unset=True),
        "submit_inpaint.json": _json(SubmitMessage(client_ref="req-2", request=inpaint,
                                                   images={"init": "up-init-1", "mask": "up-mask-1"}),
                                     exclude_unset=True),
        "cancel.json": _json(CancelMessage(job_id=JOB_ID), exclude_unset=True),
        "attach.json": _json(AttachMessage(job_id=JOB_ID), exclude_unset=True),
        "ping.json": _json(PingMessage(), exclude_unset=False),
        "live_start.json": _json(LiveStartMessage(client_ref="live-1", request=live_request(),
                                                  live=LiveOptions(preset=LivePreset.turbo, format="rgb")),
                                 exclude_unset=True),
        "live_update.json": _json(LiveUpdateMessage(job_id=LIVE_ID, request=live_request(prompt="polished marble")),
                                  exclude_unset=True),
        "live_stop.json": _json(LiveStopMessage(job_id=LIVE_ID), exclude_unset=True),
    }


def server_vectors(preview_jpeg: bytes) -> dict[str, str]:
    import base64

    request = GenerationRequest(prompt="weathered bronze, verdigris", seed=1234, steps=4, width=64, height=64)
    limits = Limits(max_width=4096, max_height=4096, max_pixels=2048 * 2048, max_steps=150, max_batch=8,
                    max_message_bytes=64 * 1024 * 1024, max_queue=32)
    hello = HelloEvent(
        server="latentbridge/0.1.0",
        capabilities=Capabilities(modes=list(Mode), samplers=list(Sampler), families=["sd1"],
                                  seamless=list(Seamless), preview_decoders=["latent2rgb", "vae", "none"],
                                  limits=limits, control_types=list(ControlType), control_modes=list(Mode),
                                  controlnets=["tiny-controlnet"], preprocessors=["none", "canny", "depth", "normal"],
                                  reference=True),
        model=ModelStatus(name="tiny", family="sd1", state=ModelState.ready, device="cpu", dtype="float32"),
    )
    error = ErrorEvent(job_id=None, code=ErrorCode.invalid_request, message="steps: Input should be less than or equal to 150",
                       field="request.steps")
    return {
        "hello.json": _json(hello),
        "hello_loading.json": _json(hello.model_copy(update={"model": ModelStatus(name="tiny", state=ModelState.loading)})),
        "accepted.json": _json(AcceptedEvent(job_id=JOB_ID, client_ref="req-1", position=0)),
        "started.json": _json(StartedEvent(job_id=JOB_ID, seed=1234)),
        "progress.json": _json(ProgressEvent(job_id=JOB_ID, step=2, total=4, eta_s=0.25)),
        "result.json": _json(ResultEvent(job_id=JOB_ID, index=0, seed=1234, width=64, height=64, request=request,
                                         url=f"/api/v1/jobs/{JOB_ID}/results/0")),
        "done.json": _json(DoneEvent(job_id=JOB_ID, count=1, elapsed_s=0.5)),
        "cancelled.json": _json(CancelledEvent(job_id=JOB_ID)),
        "error.json": _json(error),
        "error_job.json": _json(ErrorEvent(job_id=JOB_ID, code=ErrorCode.out_of_memory,
                                           message="out of memory on cuda:0; try a smaller size")),
        "status.json": _json(StatusEvent(job_id=JOB_ID, state=JobState.running, position=None, step=2, total=4,
                                         result_count=0, request=request, created_at=1700000000.0)),
        "pong.json": _json(PongEvent()),
        "model_downloading.json": _json(ModelEvent(model=ModelStatus(
            name="stabilityai/stable-diffusion-xl-base-1.0", state=ModelState.downloading, progress=0.42))),
        "preview_sse.json": _json(PreviewEvent(job_id=JOB_ID, step=2, total=4, width=32, height=32,
                                               data=base64.b64encode(preview_jpeg).decode("ascii"))),
        "live_started.json": _json(LiveStartedEvent(
            job_id=LIVE_ID, client_ref="live-1", revision=0, decoder="taesd",
            request=live_request(sampler=Sampler.euler, schedule=Schedule.trailing, guidance=0.0, steps=2),
            live=LiveOptions(preset=LivePreset.turbo, format="rgb"))),
        "live_updated.json": _json(LiveUpdatedEvent(
            job_id=LIVE_ID, revision=1, decoder="taesd",
            request=live_request(prompt="polished marble", sampler=Sampler.euler, schedule=Schedule.trailing,
                                 guidance=0.0, steps=2),
            live=LiveOptions(preset=LivePreset.turbo, format="rgb"))),
        "live_stopped.json": _json(LiveStoppedEvent(job_id=LIVE_ID, reason="stopped", frames=LiveCounts(
            received=120, rendered=41, dropped=79, stale_rendered=0, failed=0))),
    }


# Raw RGB rows, top first: a 4x2 image whose top row is red, green, blue, white.
RGB_4X2 = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255] + [0, 0, 0] * 4)


def binary_vectors(init_png: bytes, mask_png: bytes, preview_jpeg: bytes, result_png: bytes) -> dict[str, tuple[BinaryHeader, bytes]]:
    return {
        "upload_init": (BinaryHeader(kind="upload", format="png", upload_id="up-init-1"), init_png),
        "upload_mask": (BinaryHeader(kind="upload", format="png", upload_id="up-mask-1"), mask_png),
        "preview": (BinaryHeader(kind="preview", format="jpeg", job_id=JOB_ID, step=2, total=4, width=32, height=32),
                    preview_jpeg),
        "result": (BinaryHeader(kind="result", format="png", job_id=JOB_ID, index=0, width=64, height=64), result_png),
        # Raw RGB rows, top first: a 4x2 preview whose top row is red, green, blue, white.
        "preview_rgb": (BinaryHeader(kind="preview", format="rgb", job_id=JOB_ID, step=3, total=4, width=4, height=2),
                        bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255] + [0, 0, 0] * 4)),
        # A live frame: the viewport capture (init) and its depth map (control.0), one after the other.
        "live_frame": (BinaryHeader(kind="live_frame", format="png", job_id=LIVE_ID, frame=17,
                                    parts=[{"role": "init", "bytes": len(init_png)},
                                           {"role": "control.0", "bytes": len(mask_png)}]), init_png + mask_png),
        "live_frame_rgb": (BinaryHeader(kind="live_frame", format="rgb", job_id=LIVE_ID, frame=18, width=4, height=2,
                                        parts=[{"role": "init", "bytes": 24}]), RGB_4X2),
        "live_result": (BinaryHeader(kind="live_result", format="rgb", job_id=LIVE_ID, frame=18, revision=1, width=4,
                                     height=2, timings={"wait": 1.5, "decode": 0.1, "setup": 0.05, "denoise": 12.25,
                                                        "vae": 2.5, "encode": 0.02}), RGB_4X2),
    }


def _frame(header_json: bytes, payload: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack(">I", len(header_json) if length is None else length) + header_json + payload


def invalid_vectors(png: bytes) -> tuple[dict[str, bytes], dict[str, dict]]:
    """Bad frames → the error code (and field, when one is named) the server must answer with."""
    good_header = b'{"kind":"upload","format":"png","upload_id":"u1"}'
    files: dict[str, bytes] = {
        "not_json.txt": b"{this is not json",
        "not_object.json": b"[1, 2, 3]",
        "missing_type.json": b'{"job_id": "x"}',
        "unknown_type.json": b'{"type": "explode"}',
        "submit_no_request.json": b'{"type": "submit"}',
        "submit_steps_out_of_range.json": b'{"type": "submit", "request": {"steps": 100000}}',
        "submit_unknown_field.json": b'{"type": "submit", "request": {"prompt": "x", "stpes": 4}}',
        "submit_bad_size.json": b'{"type": "submit", "request": {"width": 65}}',
        "submit_bad_role.json": b'{"type": "submit", "request": {}, "images": {"depth": "u1"}}',
        "submit_control_role_out_of_range.json": b'{"type": "submit", "request": {}, "images": {"control.7": "u1"}}',
        "submit_control_bad_range.json":
            b'{"type": "submit", "request": {"controls": [{"type": "depth", "start": 0.8, "end": 0.2}]}}',
        "submit_control_unknown_type.json": b'{"type": "submit", "request": {"controls": [{"type": "heat"}]}}',
        "cancel_no_job.json": b'{"type": "cancel"}',
        "binary_too_short.bin": b"\x00\x00",
        "binary_zero_header.bin": _frame(b"", length=0),
        "binary_header_too_long.bin": _frame(b"{}", length=1_000_000),
        "binary_truncated_header.bin": _frame(good_header[:10], length=len(good_header)),
        "binary_header_not_json.bin": _frame(b"not json at all", png),
        "binary_header_not_object.bin": _frame(b"[1]", png),
        "binary_unknown_kind.bin": _frame(b'{"kind":"video","format":"png","upload_id":"u1"}', png),
        "binary_upload_without_id.bin": _frame(b'{"kind":"upload","format":"png"}', png),
        "binary_unknown_field.bin": _frame(b'{"kind":"upload","format":"png","upload_id":"u1","extra":1}', png),
        "binary_rgb_upload.bin": _frame(b'{"kind":"upload","format":"rgb","upload_id":"u1","width":1,"height":1}', b"\0\0\0"),
        "live_frame_without_parts.bin": _frame(b'{"kind":"live_frame","format":"png","job_id":"l1","frame":1}', png),
        "live_frame_without_number.bin": _frame(
            b'{"kind":"live_frame","format":"png","job_id":"l1","parts":[{"role":"init","bytes":3}]}', b"abc"),
        "live_frame_bad_role.bin": _frame(
            b'{"kind":"live_frame","format":"png","job_id":"l1","frame":1,"parts":[{"role":"mask","bytes":3}]}', b"abc"),
        "live_frame_rgb_wrong_size.bin": _frame(b'{"kind":"live_frame","format":"rgb","job_id":"l1","frame":1,'
                                                b'"width":2,"height":2,"parts":[{"role":"init","bytes":3}]}', b"abc"),
        "live_start_bad_preset.json": b'{"type": "live_start", "request": {}, "live": {"preset": "warp"}}',
        "live_stop_no_job.json": b'{"type": "live_stop"}',
    }
    bad_message = {"code": "bad_message"}
    index = {name: dict(bad_message) for name in files}
    index["submit_no_request.json"] = {"code": "invalid_request", "field": "request"}
    index["submit_steps_out_of_range.json"] = {"code": "invalid_request", "field": "request.steps"}
    index["submit_unknown_field.json"] = {"code": "invalid_request", "field": "request.stpes"}
    index["submit_bad_size.json"] = {"code": "invalid_request", "field": "request.width"}
    index["submit_bad_role.json"] = {"code": "invalid_request", "field": "images.depth.[key]"}
    index["submit_control_role_out_of_range.json"] = {"code": "invalid_request", "field": "images.control.7.[key]"}
    index["submit_control_bad_range.json"] = {"code": "invalid_request", "field": "request.controls.0"}
    index["submit_control_unknown_type.json"] = {"code": "invalid_request", "field": "request.controls.0.type"}
    index["cancel_no_job.json"] = {"code": "invalid_request", "field": "job_id"}
    index["binary_unknown_kind.bin"] = {"code": "bad_message", "field": "header.kind"}
    index["binary_upload_without_id.bin"] = {"code": "bad_message", "field": "header"}
    index["binary_unknown_field.bin"] = {"code": "bad_message", "field": "header.extra"}
    index["binary_rgb_upload.bin"] = {"code": "bad_message", "field": "header"}
    index["live_frame_without_parts.bin"] = {"code": "bad_message", "field": "header"}
    index["live_frame_without_number.bin"] = {"code": "bad_message", "field": "header"}
    index["live_frame_bad_role.bin"] = {"code": "bad_message", "field": "header.parts.0.role"}
    index["live_frame_rgb_wrong_size.bin"] = {"code": "bad_message", "field": "header"}
    index["live_start_bad_preset.json"] = {"code": "invalid_request", "field": "live.preset"}
    index["live_stop_no_job.json"] = {"code": "invalid_request", "field": "job_id"}
    return files, index


def main() -> None:
    init_png, mask_png, preview_jpeg = tiny_rgb_png(), tiny_mask_png(), tiny_preview_jpeg()
    result_png = tiny_rgb_png()
    for sub in ("client", "server", "binary", "invalid"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
        (HERE / sub).mkdir()
    for name, text in client_vectors().items():
        (HERE / "client" / name).write_text(text)
    for name, text in server_vectors(preview_jpeg).items():
        (HERE / "server" / name).write_text(text)
    for name, (header, payload) in binary_vectors(init_png, mask_png, preview_jpeg, result_png).items():
        (HERE / "binary" / f"{name}.bin").write_bytes(encode_binary_frame(header, payload))
        # Exactly the header JSON inside the frame (fields that are None are left out).
        header_dict = header.model_dump(mode="json", exclude_none=True)
        (HERE / "binary" / f"{name}.header.json").write_text(json.dumps(header_dict, indent=2, sort_keys=True) + "\n")
    files, index = invalid_vectors(init_png)
    for name, data in files.items():
        (HERE / "invalid" / name).write_bytes(data)
    (HERE / "invalid" / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
