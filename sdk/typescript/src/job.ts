// One job followed over the websocket: its events and image frames, in order.
import { LatentBridgeError } from "./errors.js";
import type { BinaryHeader, JobEvent, JobState, ResultEvent } from "./types.js";

/** A binary frame from the server: a preview (JPEG by default, or raw RGB rows) or a result PNG. */
export interface ImageFrame {
  kind: "preview" | "result";
  header: BinaryHeader;
  data: Uint8Array;
}

export type JobItem = JobEvent | ImageFrame;

export function isImageFrame(item: JobItem): item is ImageFrame {
  return "header" in item && "data" in item;
}

const FINAL = new Set(["done", "cancelled", "error"]);

/**
 * A job: an async iterable of its protocol events and `ImageFrame`s (from `accepted`, or from the
 * `status` an attach answers with, to the final `done` / `cancelled` / `error`), plus listeners
 * and the state so far. Previews are latest-wins: a slow reader gets fewer, never a backlog.
 */
export class Job implements AsyncIterable<JobItem> {
  readonly jobId: string;
  /** Queue position when accepted (0 = next to run); null once running. */
  position: number | null = null;
  state: JobState = "queued";
  step: number | null = null;
  total: number | null = null;
  seed: number | null = null;
  /** Result PNGs by index, as they arrive. */
  readonly results = new Map<number, Uint8Array>();
  /** Result events by index: seed, size and the request that regenerates exactly that image. */
  readonly resultEvents = new Map<number, ResultEvent>();
  latestPreview: ImageFrame | null = null;
  error: LatentBridgeError | null = null;
  finished = false;

  private readonly items: JobItem[] = [];
  private previewSeq = 0;
  private readonly listeners = new Set<(item: JobItem) => void>();
  private wake: (() => void) | null = null;
  private wakePromise: Promise<void> | null = null;
  private readonly finalPromise: Promise<Uint8Array[]>;
  private settle!: { resolve: (v: Uint8Array[]) => void; reject: (e: LatentBridgeError) => void };
  private readonly sendCancel: (jobId: string) => Promise<void>;

  constructor(jobId: string, sendCancel: (jobId: string) => Promise<void>) {
    this.jobId = jobId;
    this.sendCancel = sendCancel;
    this.finalPromise = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.finalPromise.catch(() => undefined); // an unobserved failure is not an unhandled rejection
  }

  /** Call `listener` with every further item; returns a function that removes it. */
  on(listener: (item: JobItem) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Cancel on the server; the job then ends with `cancelled` (a finished job is left as it is). */
  cancel(): Promise<void> {
    return this.finished ? Promise.resolve() : this.sendCancel(this.jobId);
  }

  /** Follow to the end: every result PNG in index order; rejects with the job's error
   * (code `cancelled` when it was cancelled). */
  wait(): Promise<Uint8Array[]> {
    return this.finalPromise;
  }

  /** The result PNGs so far, in index order. */
  images(): Uint8Array[] {
    return [...this.results.keys()].sort((a, b) => a - b).map((i) => this.results.get(i)!);
  }

  /** @internal An item from the connection. */
  deliver(item: JobItem): void {
    if (this.finished) return;
    if (isImageFrame(item)) {
      if (item.kind === "preview") {
        this.latestPreview = item;
        this.previewSeq += 1;
      } else {
        if (this.results.has(item.header.index ?? 0)) return; // re-sent after a re-attach
        this.results.set(item.header.index ?? 0, item.data);
        this.items.push(item);
      }
    } else {
      if (item.type === "result" && this.results.has(item.index)) return; // re-sent after a re-attach
      this.apply(item);
      this.items.push(item);
    }
    for (const listener of this.listeners) listener(item);
    this.notify();
  }

  /** @internal The job ended without a final event from the server (connection lost). */
  fail(error: LatentBridgeError): void {
    if (this.finished) return;
    this.error = error;
    this.finished = true;
    this.settle.reject(error);
    this.notify();
  }

  private apply(event: JobEvent): void {
    switch (event.type) {
      case "accepted":
        this.position = event.position;
        break;
      case "status":
        this.state = event.state;
        this.position = event.position ?? null;
        this.step = event.step ?? null;
        this.total = event.total ?? null;
        if (event.request?.seed != null) this.seed = event.request.seed;
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
    if (!FINAL.has(event.type)) return;
    this.finished = true;
    this.latestPreview = null;
    if (event.type === "done") {
      this.state = "done";
      this.settle.resolve(this.images());
    } else if (event.type === "cancelled") {
      this.state = "cancelled";
      this.error = new LatentBridgeError("the job was cancelled", "cancelled", { jobId: this.jobId });
      this.settle.reject(this.error);
    } else if (event.type === "error") {
      this.state = "failed";
      this.error = LatentBridgeError.fromEvent(event);
      this.settle.reject(this.error);
    }
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    this.wakePromise = null;
    wake?.();
  }

  private changed(): Promise<void> {
    this.wakePromise ??= new Promise((resolve) => (this.wake = resolve));
    return this.wakePromise;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<JobItem> {
    let next = 0;
    let seenPreview = this.previewSeq;
    for (;;) {
      if (next < this.items.length) {
        yield this.items[next++]!;
        continue;
      }
      if (this.latestPreview && this.previewSeq !== seenPreview) {
        seenPreview = this.previewSeq;
        yield this.latestPreview;
        continue;
      }
      if (this.finished) {
        if (this.error && !this.items.some((i) => !isImageFrame(i) && FINAL.has(i.type))) throw this.error;
        return;
      }
      await this.changed();
    }
  }
}
