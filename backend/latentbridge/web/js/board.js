// Every job of every client: the history (GET /api/v1/jobs, polled), live jobs followed over the
// websocket (attach: progress and previews of jobs other clients started too), and result bytes.
import { isImageFrame } from "../sdk/index.js";

const POLL_MS = 2000;
const LIVE = new Set(["queued", "running"]); // every other state is an end (done, failed, cancelled, ...)

export class Board {
  constructor(lb, connection) {
    this.lb = lb;
    this.connection = connection;
    this.limit = 60;
    this.statuses = new Map(); // job id → StatusEvent, in history order
    this.followed = new Map(); // job id → SDK Job
    this.previews = new Map(); // job id → latest preview ImageFrame
    this.blobs = new Map(); // "job/index" → result PNG as a Blob (fetched once)
    this.urls = new Map(); // "job/index" → object URL of that Blob
    this.signature = "";
    this.listeners = new Set();
    this.live = new Set(); // listeners for progress/preview of one job: (jobId) => void
    this.timer = null;
    this.refreshing = null;
  }

  onChange(listener) {
    this.listeners.add(listener);
  }

  onLive(listener) {
    this.live.add(listener);
  }

  changed() {
    for (const listener of this.listeners) listener();
  }

  start() {
    const tick = async () => {
      if (document.visibilityState === "visible") await this.refresh().catch(() => undefined);
      this.timer = setTimeout(tick, POLL_MS);
    };
    document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && this.refresh());
    return tick();
  }

  /** Reload the history; follow every queued or running job not followed yet. */
  refresh() {
    this.refreshing ??= (async () => {
      try {
        const jobs = await this.lb.history(this.limit);
        this.statuses = new Map(jobs.map((s) => [s.job_id, this.merge(s)]));
        for (const status of jobs) {
          if (LIVE.has(status.state) && !this.followed.has(status.job_id)) this.attach(status.job_id);
        }
        this.forgetGone();
        // Re-render only when the list changed; progress and previews update their card directly.
        const signature = jobs.map((s) => `${s.job_id}:${s.state}:${s.result_count}:${s.position}`).join(",");
        if (signature !== this.signature) {
          this.signature = signature;
          this.changed();
        }
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  /** A followed job knows its step better than the last poll. */
  merge(status) {
    const job = this.followed.get(status.job_id);
    if (!job || job.finished) return status;
    return { ...status, state: job.state === "queued" ? status.state : job.state, step: job.step ?? status.step,
      total: job.total ?? status.total };
  }

  async attach(jobId) {
    this.followed.set(jobId, null); // claimed: one attach per job
    try {
      this.follow(await this.connection.attach(jobId));
    } catch {
      this.followed.delete(jobId); // it ended meanwhile, or the connection dropped: the next poll tells
    }
  }

  /** Follow a job's events: progress and previews update its card, results land in the cache. */
  follow(job) {
    this.followed.set(job.jobId, job);
    job.on((item) => {
      if (isImageFrame(item)) {
        if (item.kind === "preview") this.previews.set(job.jobId, item);
        else this.blobs.set(`${job.jobId}/${item.header.index ?? 0}`, new Blob([item.data], { type: "image/png" }));
      } else if (item.type === "done" || item.type === "cancelled" || item.type === "error") {
        // Finished: the history has it now; the connection need not keep its events or images.
        this.previews.delete(job.jobId);
        this.followed.delete(job.jobId);
        this.connection.forget(job.jobId);
        this.refresh();
        return;
      }
      const status = this.statuses.get(job.jobId);
      if (status) this.statuses.set(job.jobId, this.merge(status));
      for (const listener of this.live) listener(job.jobId);
    });
    if (!this.statuses.has(job.jobId)) this.refresh();
  }

  showMore() {
    this.limit = Math.min(1000, this.limit + 60);
    return this.refresh();
  }

  liveJobs() {
    return [...this.statuses.values()].filter((s) => LIVE.has(s.state));
  }

  finishedJobs() {
    return [...this.statuses.values()].filter((s) => !LIVE.has(s.state));
  }

  /** A result PNG as a Blob (fetched once, with the token in the header). */
  async blob(jobId, index) {
    const key = `${jobId}/${index}`;
    if (!this.blobs.has(key)) this.blobs.set(key, new Blob([await this.lb.result(jobId, index)], { type: "image/png" }));
    return this.blobs.get(key);
  }

  /** A result's PNG bytes. */
  async png(jobId, index) {
    return new Uint8Array(await (await this.blob(jobId, index)).arrayBuffer());
  }

  /** An object URL for a result (what an <img> can show without sending the token). */
  async url(jobId, index) {
    const key = `${jobId}/${index}`;
    if (!this.urls.has(key)) this.urls.set(key, URL.createObjectURL(await this.blob(jobId, index)));
    return this.urls.get(key);
  }

  /** Drop the images of jobs no longer listed (pruned by the server's retention, or past the limit). */
  forgetGone() {
    for (const key of [...this.blobs.keys()]) {
      if (this.statuses.has(key.split("/")[0])) continue;
      this.blobs.delete(key);
      if (this.urls.has(key)) URL.revokeObjectURL(this.urls.get(key));
      this.urls.delete(key);
    }
  }
}
