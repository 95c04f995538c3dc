// The websocket protocol (docs/protocol.md): one connection carries every job of a client; a
// single message handler routes each event and binary frame to its job by `job_id`.
import { ConnectionLost, LatentBridgeError } from "./errors.js";
import { decodeBinaryFrame, encodeBinaryFrame, sniffFormat, toBytes } from "./frames.js";
import { type SubmitOptions } from "./http.js";
import { isImageFrame, Job } from "./job.js";
import { LiveSession } from "./live.js";
import type {
  Capabilities, ClientMessage, ErrorEvent, GenerationRequest, HelloEvent, JobEvent, LiveOptions, LiveStartedEvent,
  LiveStoppedEvent, LiveUpdatedEvent, ModelStatus, ServerEvent, SubmitMessage,
} from "./types.js";

export const PROTOCOL_VERSION = 1;
const CLOSE_NORMAL = 1000;
const CLOSE_POLICY = 1008; // the server's answer to a bad token

/** The part of the WHATWG WebSocket this client uses (browsers, Node 22+, and the `ws` package). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: string | ArrayBufferView | ArrayBuffer): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: any) => void): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ConnectionOptions {
  token?: string | null;
  clientName?: string;
  /** A WebSocket class; the global one, else the `ws` package (Node 20). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect after a dropped connection and re-attach every unfinished job (default false:
   * unfinished jobs fail with `ConnectionLost` and `attach` picks them up later). */
  reconnect?: boolean;
  /** Waits between reconnect attempts, in ms; the last one repeats. */
  reconnectDelaysMs?: number[];
  /** How long the handshake may take. */
  timeoutMs?: number;
}

export interface ConnectionEvents {
  /** The model's state changed (loading, downloading with progress, ready, failed). */
  model: ModelStatus;
  /** An error the server reported about no job and no pending call (e.g. a bad frame). */
  error: LatentBridgeError;
  /** The connection dropped; `reconnecting` tells whether it will try again. */
  disconnected: { reconnecting: boolean; code: number };
  /** Back after a drop: hello answered again, unfinished jobs re-attached. */
  reconnected: HelloEvent;
}

type Waiter = { accept: (event: ServerEvent) => boolean; resolve: (event: ServerEvent) => void; reject: (e: LatentBridgeError) => void };

async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const native = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (native) return native;
  const specifier = "ws"; // Node 20 and 21 have no global WebSocket: the optional `ws` package
  try {
    return ((await import(specifier)) as { WebSocket: WebSocketConstructor }).WebSocket;
  } catch {
    throw new LatentBridgeError("this runtime has no WebSocket: `npm install ws` (Node 20/21), or pass "
      + "`WebSocket` in the options", "unsupported");
  }
}

/** Whether an error answers the pending call. A submit, an attach and the live calls can be
 * refused. A refused submit or live call has no job id; an attach to an unknown job is refused
 * with `unknown_job` naming the job asked about (a cancel of an unknown job gets the same error,
 * which is not an answer to a pending submit). Errors naming a live session are about its frames. */
function answersCall(event: ErrorEvent, pending: ClientMessage): boolean {
  if (event.job_id) return pending.type === "attach" && pending.job_id === event.job_id && event.code === "unknown_job";
  if (pending.type.startsWith("live_")) return true;
  if (pending.type !== "submit" && pending.type !== "attach") return false;
  return !(pending.type === "submit" && event.code === "unknown_job" && event.field === "job_id");
}

const LIVE_EVENTS = new Set(["live_started", "live_updated", "live_stopped"]);

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class Connection {
  hello!: HelloEvent;
  readonly jobs = new Map<string, Job>();
  /** Live sessions this connection runs (they end with it). */
  readonly liveSessions = new Map<string, LiveSession>();
  private ws!: WebSocketLike;
  private readonly wsUrl: string;
  private readonly options: ConnectionOptions;
  private WebSocketClass!: WebSocketConstructor;
  private waiter: Waiter | null = null;
  private lane: Promise<unknown> = Promise.resolve();
  private uploadSeq = 0;
  private closedByUser = false;
  private reconnecting = false;
  private readonly listeners: { [K in keyof ConnectionEvents]: Set<(value: ConnectionEvents[K]) => void> } = {
    model: new Set(), error: new Set(), disconnected: new Set(), reconnected: new Set(),
  };

  private constructor(wsUrl: string, options: ConnectionOptions) {
    this.wsUrl = wsUrl;
    this.options = options;
  }

  /** Open the websocket and do the hello handshake (the token travels in `hello`, never in the URL). */
  static async open(wsUrl: string, options: ConnectionOptions = {}): Promise<Connection> {
    const connection = new Connection(wsUrl, options);
    connection.WebSocketClass = options.WebSocket ?? (await defaultWebSocket());
    connection.hello = await connection.handshake();
    return connection;
  }

  get capabilities(): Capabilities {
    return this.hello.capabilities;
  }

  get model(): ModelStatus {
    return this.hello.model;
  }

  get open(): boolean {
    return this.ws.readyState === 1;
  }

  /** Open, or dropped and reconnecting: worth keeping (a closed one is not). */
  get alive(): boolean {
    return !this.closedByUser && (this.open || this.reconnecting);
  }

  on<K extends keyof ConnectionEvents>(type: K, listener: (value: ConnectionEvents[K]) => void): () => void {
    this.listeners[type].add(listener);
    return () => this.listeners[type].delete(listener);
  }

  private emit<K extends keyof ConnectionEvents>(type: K, value: ConnectionEvents[K]): void {
    for (const listener of this.listeners[type]) listener(value);
  }

  // ------------------------------------------------------------------ socket life

  private handshake(): Promise<HelloEvent> {
    return new Promise<HelloEvent>((resolve, reject) => {
      const ws = new this.WebSocketClass(this.wsUrl);
      ws.binaryType = "arraybuffer";
      let greeted = false;
      const timer = setTimeout(() => {
        reject(new LatentBridgeError("the server did not answer `hello` in time", "timeout"));
        ws.close();
      }, this.options.timeoutMs ?? 30_000);
      this.ws = ws;
      ws.addEventListener("open", () => {
        const hello: ClientMessage = { type: "hello", protocol: PROTOCOL_VERSION, client: this.options.clientName ?? "latentbridge-ts" };
        if (this.options.token) hello.token = this.options.token;
        ws.send(JSON.stringify(hello));
      });
      ws.addEventListener("message", (event: { data: unknown }) => {
        if (greeted) {
          this.onMessage(event.data);
          return;
        }
        const message = typeof event.data === "string" ? (JSON.parse(event.data) as ServerEvent) : null;
        if (message?.type === "hello") {
          greeted = true;
          clearTimeout(timer);
          resolve(message);
        } else if (message?.type === "error") {
          clearTimeout(timer);
          reject(LatentBridgeError.fromEvent(message));
        }
      });
      ws.addEventListener("close", (event: { code: number; reason?: string }) => {
        clearTimeout(timer);
        if (!greeted) {
          const refused = event.code === CLOSE_POLICY ? "unauthorized" : "internal";
          reject(new LatentBridgeError(`the websocket closed during the handshake (code ${event.code})`, refused));
          return;
        }
        if (ws === this.ws) void this.onClose(event.code);
      });
      // An upgrade refused with 401/403 or a server that is not there: the close event follows.
      ws.addEventListener("error", () => undefined);
    });
  }

  private async onClose(code: number): Promise<void> {
    const lost = new ConnectionLost(`the websocket closed (code ${code})`);
    this.waiter?.reject(lost);
    this.waiter = null;
    const reconnecting = !!this.options.reconnect && !this.closedByUser && code !== CLOSE_POLICY;
    for (const session of this.liveSessions.values()) session.onConnectionLost(); // the server ended them
    this.liveSessions.clear();
    this.emit("disconnected", { reconnecting, code });
    if (reconnecting) {
      this.reconnecting = true;
      const back = await this.reconnect();
      this.reconnecting = false;
      if (back) return;
    }
    for (const job of this.jobs.values()) job.fail(new ConnectionLost(lost.message, job.jobId));
  }

  private async reconnect(): Promise<boolean> {
    const delays = this.options.reconnectDelaysMs ?? [250, 500, 1000, 2000, 5000];
    for (let attempt = 0; !this.closedByUser; attempt++) {
      await sleep(delays[Math.min(attempt, delays.length - 1)]!);
      if (this.closedByUser) return false;
      try {
        this.hello = await this.handshake();
      } catch (error) {
        if (error instanceof LatentBridgeError && error.code === "unauthorized") return false;
        continue;
      }
      for (const job of [...this.jobs.values()].filter((j) => !j.finished)) {
        try {
          await this.attach(job.jobId);
        } catch (error) {
          job.fail(error instanceof LatentBridgeError ? error : new ConnectionLost(String(error), job.jobId));
        }
      }
      this.emit("reconnected", this.hello);
      return true;
    }
    return false;
  }

  /** Close for good (no reconnect); jobs on the server run on. */
  close(): void {
    this.closedByUser = true;
    this.ws.close(CLOSE_NORMAL);
  }

  // ------------------------------------------------------------------ receiving

  private onMessage(data: unknown): void {
    if (typeof data !== "string") {
      this.onBinary(data as ArrayBuffer);
      return;
    }
    let event: ServerEvent;
    try {
      event = JSON.parse(data) as ServerEvent;
    } catch {
      this.emit("error", new LatentBridgeError("the server sent a text frame that is not JSON", "bad_message"));
      return;
    }
    if (event.type === "model") {
      this.hello.model = event.model;
      this.emit("model", event.model);
      return;
    }
    if (LIVE_EVENTS.has(event.type)) this.routeLive(event);
    if (this.waiter?.accept(event)) {
      const waiter = this.waiter;
      this.waiter = null;
      waiter.resolve(event);
      if (event.type !== "status") return; // an attach's status also belongs to its job
    }
    if (event.type === "error" && !event.job_id) {
      this.emit("error", LatentBridgeError.fromEvent(event));
      return;
    }
    const jobId = "job_id" in event ? event.job_id : null;
    const session = jobId ? this.liveSessions.get(jobId) : undefined;
    if (session) {
      if (event.type === "error") session.onError(event);
      return;
    }
    const job = jobId ? this.jobs.get(jobId) : undefined;
    job?.deliver(event as JobEvent);
  }

  private routeLive(event: ServerEvent): void {
    if (event.type === "live_updated") this.liveSessions.get(event.job_id)?.onUpdated(event);
    if (event.type === "live_stopped") {
      this.liveSessions.get(event.job_id)?.onStopped(event);
      this.liveSessions.delete(event.job_id);
    }
  }

  private onBinary(data: ArrayBuffer): void {
    let frame;
    try {
      frame = decodeBinaryFrame(data);
    } catch (error) {
      this.emit("error", error as LatentBridgeError);
      return;
    }
    const { header, payload } = frame;
    if (header.kind === "live_result") {
      this.liveSessions.get(header.job_id ?? "")?.onResult(header, payload);
      return;
    }
    if ((header.kind !== "preview" && header.kind !== "result") || !header.job_id) return;
    this.jobs.get(header.job_id)?.deliver({ kind: header.kind, header, data: payload });
  }

  // ------------------------------------------------------------------ sending

  /** Send one protocol message as it is (see `ClientMessage`). */
  send(message: ClientMessage | string): void {
    if (!this.open) throw new ConnectionLost("the websocket is not open");
    this.ws.send(typeof message === "string" ? message : JSON.stringify(message));
  }

  /** Send one binary frame as it is. */
  sendBytes(frame: Uint8Array): void {
    if (!this.open) throw new ConnectionLost("the websocket is not open");
    this.ws.send(frame);
  }

  /** Send `message` and wait for the reply `accept` recognises. One call at a time: the server
   * reports a refused submit as an error without a job id, an unknown job as one naming it. */
  private call<T extends ServerEvent>(message: ClientMessage, accept: (event: ServerEvent) => boolean, before?: () => void): Promise<T> {
    const run = () => new Promise<T>((resolve, reject) => {
      this.waiter = {
        accept: (event) => accept(event) || (event.type === "error" && answersCall(event, message)),
        resolve: (event) => (event.type === "error" ? reject(LatentBridgeError.fromEvent(event)) : resolve(event as T)),
        reject,
      };
      try {
        before?.();
        this.send(message);
      } catch (error) {
        this.waiter = null;
        reject(error);
      }
    });
    const result = this.lane.then(run, run);
    this.lane = result.catch(() => undefined);
    return result;
  }

  /** Upload the images, submit, wait for `accepted`; the `Job` then receives the job's events. */
  async submit(request: GenerationRequest, options: SubmitOptions & { clientRef?: string } = {}): Promise<Job> {
    const images: Record<string, string> = {}; // role → upload id
    const frames: Uint8Array[] = [];
    for (const [role, image] of [["init", options.initImage], ["mask", options.mask]] as const) {
      if (!image) continue;
      const bytes = await toBytes(image);
      const uploadId = `up-${++this.uploadSeq}-${role}`;
      frames.push(encodeBinaryFrame({ kind: "upload", format: sniffFormat(bytes), upload_id: uploadId }, bytes));
      images[role] = uploadId;
    }
    const clientRef = options.clientRef ?? `ref-${this.uploadSeq}-${Math.random().toString(36).slice(2, 10)}`;
    const message: SubmitMessage = { type: "submit", client_ref: clientRef, request, images, priority: options.priority ?? "normal" };
    const accepted = await this.call<Extract<ServerEvent, { type: "accepted" }>>(
      message, (e) => e.type === "accepted" && e.client_ref === clientRef, () => frames.forEach((f) => this.sendBytes(f)));
    const job = new Job(accepted.job_id, (id) => this.cancel(id));
    this.jobs.set(job.jobId, job);
    job.deliver(accepted);
    return job;
  }

  /** Follow a job started earlier (by anyone, e.g. before a reconnect): the `Job` starts with the
   * server's `status`; a finished job's results and final event are sent again. */
  async attach(jobId: string): Promise<Job> {
    let job = this.jobs.get(jobId);
    if (!job || job.finished) {
      job = new Job(jobId, (id) => this.cancel(id));
      this.jobs.set(jobId, job); // before the call: the status and what follows route to it
    }
    try {
      await this.call({ type: "attach", job_id: jobId }, (e) => e.type === "status" && e.job_id === jobId);
    } catch (error) {
      if (!job.finished) this.jobs.delete(jobId);
      throw error;
    }
    return job;
  }

  /** Cancel a queued or running job; its stream ends with `cancelled`. Fire and forget. */
  async cancel(jobId: string): Promise<void> {
    this.send({ type: "cancel", job_id: jobId });
  }

  /** Stop following a job here (it runs on, on the server). */
  forget(jobId: string): void {
    this.jobs.delete(jobId);
  }

  /** Start a live session (docs/live.md): img2img of every frame sent (txt2img from the control
   * maps when the request has control units and no init). Rejects when the server refuses it. */
  async liveStart(request: GenerationRequest, live: LiveOptions = {}, clientRef?: string): Promise<LiveSession> {
    const ref = clientRef ?? `live-${++this.uploadSeq}-${Math.random().toString(36).slice(2, 10)}`;
    const started = await this.call<LiveStartedEvent>({ type: "live_start", client_ref: ref, request, live },
      (e) => e.type === "live_started" && e.client_ref === ref);
    const session = new LiveSession({
      sendBytes: (bytes) => this.sendBytes(bytes),
      liveUpdate: (jobId, req, options) => this.call<LiveUpdatedEvent>(
        { type: "live_update", job_id: jobId, ...(req ? { request: req } : {}), ...(options ? { live: options } : {}) },
        (e) => e.type === "live_updated" && e.job_id === jobId),
      liveStop: (jobId) => this.call<LiveStoppedEvent>({ type: "live_stop", job_id: jobId },
        (e) => e.type === "live_stopped" && e.job_id === jobId),
    }, started);
    this.liveSessions.set(session.jobId, session);
    return session;
  }

  /** Application-level round trip, in milliseconds. */
  async ping(): Promise<number> {
    const start = performance.now();
    await this.call({ type: "ping" }, (e) => e.type === "pong");
    return performance.now() - start;
  }
}

export { isImageFrame };
