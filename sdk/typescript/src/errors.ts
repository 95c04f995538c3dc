import type { ErrorCode, ErrorEvent } from "./types.js";

/** Everything the server refuses, and every failure of a followed job, with the server's code
 * (`ErrorCode`) and the offending `field` when there is one. */
export class LatentBridgeError extends Error {
  override name = "LatentBridgeError";
  readonly code: ErrorCode;
  readonly field: string | null;
  readonly jobId: string | null;
  /** The HTTP status, for errors answered over HTTP. */
  readonly status: number | null;

  constructor(message: string, code: ErrorCode, options: { field?: string | null; jobId?: string | null; status?: number | null } = {}) {
    super(message);
    this.code = code;
    this.field = options.field ?? null;
    this.jobId = options.jobId ?? null;
    this.status = options.status ?? null;
  }

  static fromEvent(event: ErrorEvent, status?: number): LatentBridgeError {
    return new LatentBridgeError(event.message, event.code, { field: event.field, jobId: event.job_id, status });
  }
}

/** The websocket closed while a job was followed; `attach(jobId)` picks the job up again (its
 * results stay on the server). Code `internal`, as in the Python SDK. */
export class ConnectionLost extends LatentBridgeError {
  override name = "ConnectionLost";

  constructor(message = "the connection to the server was lost", jobId: string | null = null) {
    super(message, "internal", { jobId });
  }
}

const FALLBACK_CODES: Record<number, ErrorCode> = {
  401: "unauthorized", 403: "forbidden", 404: "unknown_job", 413: "too_large", 429: "queue_full", 503: "model_not_ready",
};

/** A typed error from an HTTP error response (an `ErrorEvent` body; anything else by status). */
export function errorFromBody(status: number, body: string): LatentBridgeError {
  try {
    const data: unknown = JSON.parse(body);
    if (data && typeof data === "object" && "code" in data && "message" in data) {
      return LatentBridgeError.fromEvent(data as ErrorEvent, status);
    }
  } catch {
    // not JSON: fall through
  }
  const text = body.slice(0, 200).trim();
  return new LatentBridgeError(`HTTP ${status}${text ? `: ${text}` : ""}`, FALLBACK_CODES[status] ?? "internal", { status });
}
