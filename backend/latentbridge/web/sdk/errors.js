/** Everything the server refuses, and every failure of a followed job, with the server's code
 * (`ErrorCode`) and the offending `field` when there is one. */
export class LatentBridgeError extends Error {
    name = "LatentBridgeError";
    code;
    field;
    jobId;
    /** The HTTP status, for errors answered over HTTP. */
    status;
    constructor(message, code, options = {}) {
        super(message);
        this.code = code;
        this.field = options.field ?? null;
        this.jobId = options.jobId ?? null;
        this.status = options.status ?? null;
    }
    static fromEvent(event, status) {
        return new LatentBridgeError(event.message, event.code, { field: event.field, jobId: event.job_id, status });
    }
}
/** The websocket closed while a job was followed; `attach(jobId)` picks the job up again (its
 * results stay on the server). Code `internal`, as in the Python SDK. */
export class ConnectionLost extends LatentBridgeError {
    name = "ConnectionLost";
    constructor(message = "the connection to the server was lost", jobId = null) {
        super(message, "internal", { jobId });
    }
}
const FALLBACK_CODES = {
    401: "unauthorized", 403: "forbidden", 404: "unknown_job", 413: "too_large", 429: "queue_full", 503: "model_not_ready",
};
/** A typed error from an HTTP error response (an `ErrorEvent` body; anything else by status). */
export function errorFromBody(status, body) {
    try {
        const data = JSON.parse(body);
        if (data && typeof data === "object" && "code" in data && "message" in data) {
            return LatentBridgeError.fromEvent(data, status);
        }
    }
    catch {
        // not JSON: fall through
    }
    const text = body.slice(0, 200).trim();
    return new LatentBridgeError(`HTTP ${status}${text ? `: ${text}` : ""}`, FALLBACK_CODES[status] ?? "internal", { status });
}
