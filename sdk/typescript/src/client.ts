// The client most programs use: the HTTP API plus one shared websocket connection.
import { LatentBridgeError } from "./errors.js";
import { HttpApi, splitUrl, type HttpOptions, type SubmitOptions } from "./http.js";
import { isImageFrame, type Job } from "./job.js";
import type { LiveSession } from "./live.js";
import { Connection, type ConnectionOptions } from "./socket.js";
import type { BinaryHeader, GenerationRequest, LiveOptions, ProgressEvent } from "./types.js";

export type ClientOptions = HttpOptions & Omit<ConnectionOptions, "token" | "clientName">;

export interface GenerateOptions extends SubmitOptions {
  onProgress?: (event: ProgressEvent) => void;
  /** Preview bytes (JPEG by default; raw RGB rows when `request.preview.format` is "rgb") and their header. */
  onPreview?: (data: Uint8Array, header: BinaryHeader) => void;
  /** Aborting cancels the job on the server. */
  signal?: AbortSignal;
  /** "ws" (default) or "http" (multipart submit + server-sent events). */
  transport?: "ws" | "http";
}

function base64Bytes(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

export class LatentBridge extends HttpApi {
  readonly wsUrl: string;
  private readonly options: ClientOptions;
  private connecting: Promise<Connection> | null = null;

  constructor(url: string, options: ClientOptions = {}) {
    super(url, options);
    this.wsUrl = splitUrl(url).wsUrl;
    this.options = options;
  }

  /** The shared websocket connection: opened and greeted on first use, and again after it closed. */
  connect(): Promise<Connection> {
    const previous = this.connecting;
    // Chained on the previous call, so concurrent callers share one connection.
    const next = (async () => {
      const current = await previous?.catch(() => null);
      if (current?.alive) return current;
      return Connection.open(this.wsUrl, { ...this.options, token: this.token, clientName: this.clientName });
    })();
    this.connecting = next;
    next.catch(() => this.connecting === next && (this.connecting = null)); // a failed connect is retried next time
    return next;
  }

  async submit(request: GenerationRequest, options: SubmitOptions & { clientRef?: string } = {}): Promise<Job> {
    return (await this.connect()).submit(request, options);
  }

  async attach(jobId: string): Promise<Job> {
    return (await this.connect()).attach(jobId);
  }

  async cancel(jobId: string): Promise<void> {
    return (await this.connect()).cancel(jobId);
  }

  /** Start a live session on the shared connection (docs/live.md); it ends with the connection. */
  async liveStart(request: GenerationRequest, live: LiveOptions = {}): Promise<LiveSession> {
    return (await this.connect()).liveStart(request, live);
  }

  /** Submit and follow to the end: the PNG bytes of every image (the request is embedded in each). */
  async generate(request: GenerationRequest, options: GenerateOptions = {}): Promise<Uint8Array[]> {
    return options.transport === "http" ? this.generateHttp(request, options) : this.generateWs(request, options);
  }

  private async generateWs(request: GenerationRequest, options: GenerateOptions): Promise<Uint8Array[]> {
    options.signal?.throwIfAborted();
    const job = await this.submit(request, options);
    const abort = () => void job.cancel();
    options.signal?.addEventListener("abort", abort, { once: true });
    try {
      for await (const item of job) {
        if (isImageFrame(item)) {
          if (item.kind === "preview") options.onPreview?.(item.data, item.header);
        } else if (item.type === "progress") {
          options.onProgress?.(item);
        }
      }
      return await job.wait();
    } finally {
      options.signal?.removeEventListener("abort", abort);
    }
  }

  private async generateHttp(request: GenerationRequest, options: GenerateOptions): Promise<Uint8Array[]> {
    options.signal?.throwIfAborted();
    const { job_id: jobId } = await this.submitHttp(request, options);
    const abort = () => void this.cancelHttp(jobId).catch(() => undefined);
    options.signal?.addEventListener("abort", abort, { once: true });
    const indices: number[] = [];
    try {
      for await (const event of this.eventsHttp(jobId)) {
        if (event.type === "progress") options.onProgress?.(event);
        else if (event.type === "preview") {
          options.onPreview?.(base64Bytes(event.data), {
            kind: "preview", format: event.format ?? "jpeg", job_id: jobId, step: event.step, total: event.total,
            width: event.width, height: event.height,
          });
        } else if (event.type === "result") indices.push(event.index);
        else if (event.type === "error") throw LatentBridgeError.fromEvent(event);
        else if (event.type === "cancelled") throw new LatentBridgeError("the job was cancelled", "cancelled", { jobId });
      }
    } finally {
      options.signal?.removeEventListener("abort", abort);
    }
    return Promise.all(indices.map((i) => this.result(jobId, i)));
  }

  /** Close the websocket (jobs on the server run on). */
  async close(): Promise<void> {
    const connecting = this.connecting;
    this.connecting = null;
    if (connecting) (await connecting.catch(() => null))?.close();
  }
}
