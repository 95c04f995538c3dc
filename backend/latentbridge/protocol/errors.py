"""Error codes, the typed errors, and the strict JSON reader every message goes through."""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from .requests import GenerationRequest

if TYPE_CHECKING:
    from .events import ErrorEvent


class ErrorCode(str, Enum):
    bad_message = "bad_message"  # not JSON, unknown type, wrong binary header
    invalid_request = "invalid_request"  # a field failed validation (see `field`)
    bad_image = "bad_image"  # undecodable / truncated / wrong size image
    missing_image = "missing_image"  # mode needs an init image or mask that was not sent
    too_large = "too_large"  # body, message, pixel or upload limit exceeded
    unknown_model = "unknown_model"
    model_not_ready = "model_not_ready"
    model_load_failed = "model_load_failed"
    unsupported = "unsupported"  # mode/sampler/family combination the engine cannot do
    unknown_job = "unknown_job"
    queue_full = "queue_full"
    cancelled = "cancelled"
    out_of_memory = "out_of_memory"
    timeout = "timeout"
    interrupted = "interrupted"  # the server stopped before the job finished (see JobState.interrupted)
    worker_lost = "worker_lost"  # the engine replica running the job died, and so did the one it was retried on
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    internal = "internal"


class LatentBridgeError(Exception):
    """An error with a wire code. Raised anywhere; the server turns it into an `ErrorEvent`."""

    code: ErrorCode = ErrorCode.internal

    def __init__(self, message: str, *, field: str | None = None, code: ErrorCode | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_event(self, job_id: str | None = None) -> "ErrorEvent":
        from .events import ErrorEvent  # events.py imports this module

        return ErrorEvent(job_id=job_id, code=self.code, message=self.message, field=self.field)


class InvalidRequest(LatentBridgeError):
    code = ErrorCode.invalid_request


class BadImage(LatentBridgeError):
    code = ErrorCode.bad_image


class MissingImage(LatentBridgeError):
    code = ErrorCode.missing_image


class TooLarge(LatentBridgeError):
    code = ErrorCode.too_large


class UnknownModel(LatentBridgeError):
    code = ErrorCode.unknown_model


class Unsupported(LatentBridgeError):
    code = ErrorCode.unsupported


class Cancelled(LatentBridgeError):
    code = ErrorCode.cancelled

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)


class OutOfMemory(LatentBridgeError):
    code = ErrorCode.out_of_memory


def error_from_validation(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """First pydantic error as a typed InvalidRequest naming the offending field (dotted path)."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    return InvalidRequest(f"{field or 'request'}: {first.get('msg', 'invalid value')}", field=field or None)


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999: Python would read it as inf
        raise _NotFinite(text)
    return value


def loads_json(text: str | bytes | bytearray, what: str = "message", field: str | None = None) -> Any:
    """Strict JSON for everything a client sends: NaN, Infinity and numbers beyond a float's range
    are refused (they are not JSON, and a NaN must never reach a response), and nesting too deep
    for the decoder is a typed error, not a RecursionError. Any failure is `bad_message`."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotFinite as exc:
        raise LatentBridgeError(f"{what} contains {exc}: NaN and Infinity are not JSON numbers",
                                field=field, code=ErrorCode.bad_message) from None
    except RecursionError:
        raise LatentBridgeError(f"{what} is nested too deeply", field=field, code=ErrorCode.bad_message) from None
    except (ValueError, UnicodeDecodeError):
        raise LatentBridgeError(f"{what} is not valid JSON", field=field, code=ErrorCode.bad_message) from None


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_object(model: type[ModelT], data: Any, what: str = "request", field: str = "request") -> ModelT:
    """Validate a JSON-like object into `model`, or raise InvalidRequest naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object", field=field)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error_from_validation(exc) from None


def parse_request(data: Any) -> GenerationRequest:
    """Validate a JSON-like object into a GenerationRequest or raise InvalidRequest."""
    return parse_object(GenerationRequest, data)
