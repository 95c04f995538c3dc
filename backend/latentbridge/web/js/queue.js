// The queue: every queued or running job (from any client) with its state, progress, the latest
// step preview, and a cancel button.
import { $, clear, clip, h, toast } from "./dom.js";
import { describe } from "./recipe.js";

export class QueueView {
  constructor(board) {
    this.board = board;
    this.root = $("#queue-list");
    this.cards = new Map(); // job id → {el, parts}
    board.onChange(() => this.render());
    board.onLive((jobId) => this.update(jobId));
  }

  render() {
    const live = this.board.liveJobs();
    $("#queue-count").textContent = live.length ? `(${live.length})` : "";
    const keep = new Set(live.map((s) => s.job_id));
    for (const [id, card] of this.cards) {
      if (!keep.has(id)) {
        card.el.remove();
        this.cards.delete(id);
      }
    }
    if (!live.length) {
      clear(this.root).append(h("p.empty", {}, "Nothing queued. Jobs from every client appear here."));
      return;
    }
    $(".empty", this.root)?.remove();
    // Running first, then by queue position (the server's order).
    live.sort((a, b) => (a.state === "running" ? -1 : b.state === "running" ? 1 : (a.position ?? 0) - (b.position ?? 0)));
    for (const status of live) {
      const card = this.cards.get(status.job_id) ?? this.create(status);
      this.root.append(card.el); // appending an existing node moves it: the list keeps the order
      this.update(status.job_id);
    }
  }

  create(status) {
    const parts = {
      state: h("span.badge"),
      step: h("span.step"),
      progress: h("progress", { max: 1, value: 0 }),
      preview: h("canvas.preview", { width: 1, height: 1, ariaLabel: "step preview" }),
      cancel: h("button.secondary", { type: "button", onclick: () => this.cancel(status.job_id) }, "Cancel"),
    };
    const el = h("li.job-card", { dataset: { jobId: status.job_id } },
      parts.preview,
      h("div.job-body", {},
        h("div.job-head", {}, parts.state, h("span.meta", {}, describe(status.request)), parts.step),
        h("p.prompt", { title: status.request?.prompt ?? "" }, clip(status.request?.prompt || "(no prompt)", 140)),
        parts.progress),
      parts.cancel);
    const card = { el, parts };
    this.cards.set(status.job_id, card);
    return card;
  }

  update(jobId) {
    const card = this.cards.get(jobId);
    const status = this.board.statuses.get(jobId);
    if (!card || !status) return;
    const { parts } = card;
    const running = status.state === "running";
    parts.state.textContent = running ? "running" : `queued${status.position != null ? ` #${status.position + 1}` : ""}`;
    parts.state.className = `badge ${status.state}`;
    const total = status.total ?? status.request?.steps ?? 0;
    const step = running ? status.step ?? 0 : 0;
    parts.step.textContent = running && total ? `step ${step}/${total}` : "";
    parts.progress.value = total ? step / total : 0;
    const preview = this.board.previews.get(jobId);
    if (preview && preview !== card.shown) {
      card.shown = preview;
      drawPreview(parts.preview, preview).catch(() => undefined);
    }
  }

  async cancel(jobId) {
    try {
      await this.board.lb.cancelHttp(jobId);
      toast("Cancelled");
    } catch (error) {
      toast(`Cancel failed: ${error.message}`, "error");
    }
    this.board.refresh();
  }
}

/** A preview frame on a canvas: JPEG/PNG/WebP bytes, or raw RGB rows (what Blender asks for). */
export async function drawPreview(canvas, frame) {
  const { width, height, format } = frame.header;
  const ctx = canvas.getContext("2d");
  if (format === "rgb") {
    canvas.width = width;
    canvas.height = height;
    const rgba = new Uint8ClampedArray(width * height * 4);
    for (let i = 0, j = 0; i < frame.data.length; i += 3, j += 4) {
      rgba[j] = frame.data[i];
      rgba[j + 1] = frame.data[i + 1];
      rgba[j + 2] = frame.data[i + 2];
      rgba[j + 3] = 255;
    }
    ctx.putImageData(new ImageData(rgba, width, height), 0, 0);
    return;
  }
  const bitmap = await createImageBitmap(new Blob([frame.data], { type: `image/${format}` }));
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
}
