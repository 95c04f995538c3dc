// Live sessions (docs/live.md): send frames, get the newest result back, change the settings
// without a restart. Latest wins on this side as on the server: at most ONE frame is in flight
// (sent, not answered yet) and at most one is pending; a newer frame replaces the pending one
// (counted in `dropped`). The pending frame goes out when the in-flight one is answered (its
// result, an error about the session, or a `live_updated` that may have dropped it there).
import { ConnectionLost, LatentBridgeError } from "./errors.js";
import { encodeBinaryFrame, sniffFormat, toBytes } from "./frames.js";
/** A frame that was never answered (a server restart, say) stops holding back the next one. */
export const IN_FLIGHT_TIMEOUT_MS = 10_000;
/**
 * A running live session (from `LatentBridge.liveStart`): an async iterable of its results (it
 * ends when the session stops and throws when it failed or the connection dropped), `latest`, and
 * the calls that drive it.
 */
export class LiveSession {
    jobId;
    request;
    live;
    decoder;
    revision;
    latest = null;
    /** Frames the server refused or failed (the session carried on). */
    errors = [];
    stopped = null;
    /** Frames sent, and frames replaced here before they were sent. */
    sent = 0;
    dropped = 0;
    link;
    nextNumber = 0;
    inFlight = null;
    pending = null;
    end = null;
    items = [];
    wakers = new Set(); // every waiting nextResult / iteration
    listeners = new Set();
    constructor(link, started) {
        this.link = link;
        this.jobId = started.job_id;
        this.request = started.request;
        this.live = started.live;
        this.decoder = started.decoder;
        this.revision = started.revision ?? 0;
    }
    get running() {
        return this.stopped === null && this.end === null;
    }
    /** Call `listener` with every further result; returns a function that removes it. */
    on(listener) {
        this.listeners.add(listener);
        return () => this.listeners.delete(listener);
    }
    /** Offer one frame; resolves to its number once it is sent or held as the pending one. Never
     * waits for the server. Encoded images (PNG, JPEG, WebP) or raw RGB rows of `size`. */
    async sendFrame(frame) {
        this.throwIfEnded();
        const bytes = await this.encode(this.nextNumber, frame);
        this.throwIfEnded();
        const number = this.nextNumber++;
        if (this.inFlight && performance.now() - this.inFlight.at > IN_FLIGHT_TIMEOUT_MS)
            this.inFlight = null;
        if (this.inFlight === null) {
            this.send(number, bytes);
        }
        else {
            if (this.pending !== null)
                this.dropped += 1;
            this.pending = { number, bytes };
        }
        return number;
    }
    /** The next result to arrive; rejects with `timeout` after `timeoutMs`, and once the session has ended. */
    async nextResult(timeoutMs) {
        const item = await this.next(timeoutMs === undefined ? null : performance.now() + timeoutMs);
        if ("end" in item)
            throw this.endError(item.end);
        return item;
    }
    async *[Symbol.asyncIterator]() {
        for (;;) {
            const item = await this.next(null);
            if (!("end" in item)) {
                yield item;
                continue;
            }
            if (item.end instanceof LatentBridgeError)
                throw item.end;
            return;
        }
    }
    /** The next result (taken), or the session's end (left in place: every later call sees it). */
    async next(deadline) {
        for (;;) {
            const item = this.items[0];
            if (item)
                return "end" in item ? item : this.items.shift();
            const left = deadline === null ? null : deadline - performance.now();
            if (left !== null && left <= 0)
                throw new LatentBridgeError("no live result in time", "timeout", { jobId: this.jobId });
            await this.changed(left);
        }
    }
    /** New settings without a restart (the server renders the last frame again with them). A
     * settings error rejects and the session keeps the old ones. */
    async update(changes) {
        this.throwIfEnded();
        return this.link.liveUpdate(this.jobId, changes.request, changes.live);
    }
    /** End the session; resolves to its counts (received, rendered, dropped, failed). */
    async stop() {
        if (this.stopped)
            return this.stopped;
        this.throwIfEnded();
        return this.link.liveStop(this.jobId);
    }
    // ------------------------------------------------------------------ from the connection
    /** @internal */
    onResult(header, data) {
        const result = {
            frame: header.frame ?? 0, revision: header.revision ?? 0, format: header.format, width: header.width ?? 0,
            height: header.height ?? 0, data, timings: header.timings ?? null,
        };
        this.latest = result;
        if (this.inFlight && result.frame >= this.inFlight.frame)
            this.answered();
        this.push(result);
        for (const listener of this.listeners)
            listener(result);
    }
    /** @internal */
    onError(event) {
        this.errors.push(LatentBridgeError.fromEvent(event));
        this.answered(); // a refused or failed frame is answered too: the next one may go
    }
    /** @internal */
    onUpdated(event) {
        this.request = event.request;
        this.live = event.live;
        this.decoder = event.decoder;
        this.revision = event.revision;
        this.answered(); // a pending frame the new settings do not fit was dropped unanswered there
    }
    /** @internal */
    onStopped(event) {
        this.stopped = event;
        this.pending = null;
        if (event.reason !== "failed") {
            this.push({ end: event });
            return;
        }
        const last = this.errors[this.errors.length - 1];
        this.end = last ?? new LatentBridgeError(event.message ?? `live session ${this.jobId} failed`, "internal", { jobId: this.jobId });
        this.push({ end: this.end });
    }
    /** @internal The connection dropped: the server ended the session with it. */
    onConnectionLost() {
        if (!this.running)
            return;
        this.end = new ConnectionLost(`connection closed: live session ${this.jobId} ended`, this.jobId);
        this.pending = null;
        this.push({ end: this.end });
    }
    // ------------------------------------------------------------------ internals
    throwIfEnded() {
        if (this.end)
            throw this.end;
        if (this.stopped) {
            throw new LatentBridgeError(`live session ${this.jobId} has stopped (${this.stopped.reason})`, "unknown_job", { field: "job_id", jobId: this.jobId });
        }
    }
    endError(end) {
        if (end instanceof LatentBridgeError)
            return end;
        return new LatentBridgeError(`live session ${this.jobId} ${end.reason}`, "cancelled", { jobId: this.jobId });
    }
    send(number, bytes) {
        this.inFlight = { frame: number, at: performance.now() };
        this.sent += 1;
        try {
            this.link.sendBytes(bytes);
        }
        catch (error) {
            this.inFlight = null; // the connection reports the drop to the session
            throw error;
        }
    }
    answered() {
        this.inFlight = null;
        const pending = this.pending;
        this.pending = null;
        if (pending !== null && this.running) {
            try {
                this.send(pending.number, pending.bytes);
            }
            catch {
                // connection gone: onConnectionLost follows
            }
        }
    }
    push(item) {
        this.items.push(item);
        const wakers = [...this.wakers];
        this.wakers.clear();
        for (const wake of wakers)
            wake();
    }
    changed(timeoutMs) {
        return new Promise((resolve) => {
            const wake = () => {
                if (timer !== null)
                    clearTimeout(timer);
                this.wakers.delete(wake);
                resolve();
            };
            const timer = timeoutMs === null ? null : setTimeout(wake, timeoutMs);
            this.wakers.add(wake);
        });
    }
    async encode(number, frame) {
        const controls = Array.isArray(frame.controls)
            ? frame.controls.map((image, i) => [i, image])
            : Object.entries(frame.controls ?? {}).map(([i, image]) => [Number(i), image]);
        const parts = [];
        if (frame.init !== undefined)
            parts.push(["init", await toBytes(frame.init)]);
        for (const [i, image] of controls.sort((a, b) => a[0] - b[0]))
            parts.push([`control.${i}`, await toBytes(image)]);
        if (parts.length === 0)
            throw new LatentBridgeError("a live frame needs `init` or a control map", "bad_image", { field: "init" });
        let format = "png";
        if (frame.size) {
            const expected = frame.size.width * frame.size.height * 3;
            const wrong = parts.find(([, bytes]) => bytes.length !== expected);
            if (wrong) {
                throw new LatentBridgeError(`${wrong[0]}: raw RGB needs ${expected} bytes, got ${wrong[1].length}`, "bad_image", { field: wrong[0] });
            }
            format = "rgb";
        }
        else {
            const formats = new Set(parts.map(([, bytes]) => sniffFormat(bytes)));
            if (formats.size === 1)
                format = [...formats][0]; // the server decodes each part by its own bytes anyway
        }
        const payload = new Uint8Array(parts.reduce((n, [, bytes]) => n + bytes.length, 0));
        let offset = 0;
        for (const [, bytes] of parts) {
            payload.set(bytes, offset);
            offset += bytes.length;
        }
        const header = {
            kind: "live_frame", format, job_id: this.jobId, frame: number,
            parts: parts.map(([role, bytes]) => ({ role, bytes: bytes.length })),
            ...(frame.size ? { width: frame.size.width, height: frame.size.height } : {}),
        };
        return encodeBinaryFrame(header, payload);
    }
}
