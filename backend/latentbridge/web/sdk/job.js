// One job followed over the websocket: its events and image frames, in order.
import { LatentBridgeError } from "./errors.js";
export function isImageFrame(item) {
    return "header" in item && "data" in item;
}
const FINAL = new Set(["done", "cancelled", "error"]);
/**
 * A job: an async iterable of its protocol events and `ImageFrame`s (from `accepted`, or from the
 * `status` an attach answers with, to the final `done` / `cancelled` / `error`), plus listeners
 * and the state so far. Previews are latest-wins: a slow reader gets fewer, never a backlog.
 */
export class Job {
    jobId;
    /** Queue position when accepted (0 = next to run); null once running. */
    position = null;
    state = "queued";
    step = null;
    total = null;
    seed = null;
    /** Result PNGs by index, as they arrive. */
    results = new Map();
    /** Result events by index: seed, size and the request that regenerates exactly that image. */
    resultEvents = new Map();
    latestPreview = null;
    error = null;
    finished = false;
    items = [];
    previewSeq = 0;
    listeners = new Set();
    wake = null;
    wakePromise = null;
    finalPromise;
    settle;
    sendCancel;
    constructor(jobId, sendCancel) {
        this.jobId = jobId;
        this.sendCancel = sendCancel;
        this.finalPromise = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
        this.finalPromise.catch(() => undefined); // an unobserved failure is not an unhandled rejection
    }
    /** Call `listener` with every further item; returns a function that removes it. */
    on(listener) {
        this.listeners.add(listener);
        return () => this.listeners.delete(listener);
    }
    /** Cancel on the server; the job then ends with `cancelled` (a finished job is left as it is). */
    cancel() {
        return this.finished ? Promise.resolve() : this.sendCancel(this.jobId);
    }
    /** Follow to the end: every result PNG in index order; rejects with the job's error
     * (code `cancelled` when it was cancelled). */
    wait() {
        return this.finalPromise;
    }
    /** The result PNGs so far, in index order. */
    images() {
        return [...this.results.keys()].sort((a, b) => a - b).map((i) => this.results.get(i));
    }
    /** @internal An item from the connection. */
    deliver(item) {
        if (this.finished)
            return;
        if (isImageFrame(item)) {
            if (item.kind === "preview") {
                this.latestPreview = item;
                this.previewSeq += 1;
            }
            else {
                if (this.results.has(item.header.index ?? 0))
                    return; // re-sent after a re-attach
                this.results.set(item.header.index ?? 0, item.data);
                this.items.push(item);
            }
        }
        else {
            if (item.type === "result" && this.results.has(item.index))
                return; // re-sent after a re-attach
            this.apply(item);
            this.items.push(item);
        }
        for (const listener of this.listeners)
            listener(item);
        this.notify();
    }
    /** @internal The job ended without a final event from the server (connection lost). */
    fail(error) {
        if (this.finished)
            return;
        this.error = error;
        this.finished = true;
        this.settle.reject(error);
        this.notify();
    }
    apply(event) {
        switch (event.type) {
            case "accepted":
                this.position = event.position;
                break;
            case "status":
                this.state = event.state;
                this.position = event.position ?? null;
                this.step = event.step ?? null;
                this.total = event.total ?? null;
                if (event.request?.seed != null)
                    this.seed = event.request.seed;
                break;
            case "started":
                this.state = "running";
                this.position = null;
                this.seed = event.seed;
                break;
            case "progress":
                this.state = "running";
                this.step = event.step;
                this.total = event.total;
                break;
            case "result":
                this.resultEvents.set(event.index, event);
                break;
            default:
                break;
        }
        if (!FINAL.has(event.type))
            return;
        this.finished = true;
        this.latestPreview = null;
        if (event.type === "done") {
            this.state = "done";
            this.settle.resolve(this.images());
        }
        else if (event.type === "cancelled") {
            this.state = "cancelled";
            this.error = new LatentBridgeError("the job was cancelled", "cancelled", { jobId: this.jobId });
            this.settle.reject(this.error);
        }
        else if (event.type === "error") {
            this.state = "failed";
            this.error = LatentBridgeError.fromEvent(event);
            this.settle.reject(this.error);
        }
    }
    notify() {
        const wake = this.wake;
        this.wake = null;
        this.wakePromise = null;
        wake?.();
    }
    changed() {
        this.wakePromise ??= new Promise((resolve) => (this.wake = resolve));
        return this.wakePromise;
    }
    async *[Symbol.asyncIterator]() {
        let next = 0;
        let seenPreview = this.previewSeq;
        for (;;) {
            if (next < this.items.length) {
                yield this.items[next++];
                continue;
            }
            if (this.latestPreview && this.previewSeq !== seenPreview) {
                seenPreview = this.previewSeq;
                yield this.latestPreview;
                continue;
            }
            if (this.finished) {
                if (this.error && !this.items.some((i) => !isImageFrame(i) && FINAL.has(i.type)))
                    throw this.error;
                return;
            }
            await this.changed();
        }
    }
}
