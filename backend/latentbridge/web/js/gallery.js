// History: finished jobs of every client, newest first; results as a gallery, failed and
// cancelled jobs with their reason. A click opens the result with its recipe.
import { $, clip, h, toast, when } from "./dom.js";
import { describe } from "./recipe.js";

export class GalleryView {
  constructor(board, viewer) {
    this.board = board;
    this.viewer = viewer;
    this.root = $("#gallery");
    this.cards = new Map(); // job id → {el, state}
    this.observer = new IntersectionObserver((entries) => this.reveal(entries), { rootMargin: "400px" });
    board.onChange(() => this.render());
    $("#more").addEventListener("click", () => board.showMore());
  }

  render() {
    const jobs = this.board.finishedJobs();
    const keep = new Set(jobs.map((s) => s.job_id));
    for (const [id, card] of this.cards) {
      if (!keep.has(id)) {
        card.el.remove();
        this.cards.delete(id);
      }
    }
    $("#gallery-empty").hidden = jobs.length > 0;
    $("#more").hidden = this.board.statuses.size < this.board.limit; // the server may hold more
    for (const status of jobs) {
      let card = this.cards.get(status.job_id);
      if (!card || card.state !== status.state || card.count !== status.result_count) {
        const el = this.create(status);
        if (card) card.el.replaceWith(el);
        card = { el, state: status.state, count: status.result_count };
        this.cards.set(status.job_id, card);
      }
      this.root.append(card.el);
    }
  }

  create(status) {
    const request = status.request ?? {};
    const title = h("p.prompt", { title: request.prompt ?? "" }, clip(request.prompt || "(no prompt)", 90));
    const meta = h("p.meta", {}, describe(request), h("br"), when(status.finished_at ?? status.created_at));
    if (status.state !== "done") {
      const reason = status.state === "cancelled" ? "Cancelled" : status.error?.message ?? "Failed";
      return h(`li.tile.${status.state}`, { dataset: { jobId: status.job_id } },
        h("div.tile-state", {}, h("span", { className: `badge ${status.state}` }, status.state), h("p.reason", {}, reason)),
        title, meta);
    }
    const images = [];
    for (let index = 0; index < status.result_count; index++) {
      const img = h("img.thumb", { alt: `result ${index + 1} of "${clip(request.prompt || "", 60)}"`, dataset: { jobId: status.job_id, index } });
      this.observer.observe(img);
      images.push(h("button.thumb-button", { type: "button", title: "Open", onclick: () => this.open(status, index) }, img));
    }
    return h("li.tile.done", { dataset: { jobId: status.job_id } }, h("div.thumbs", {}, images), title, meta);
  }

  open(status, index) {
    this.viewer.open(status, index).catch((error) => toast(`Could not open the result: ${error.message}`, "error"));
  }

  async reveal(entries) {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      const img = entry.target;
      this.observer.unobserve(img);
      try {
        img.src = await this.board.url(img.dataset.jobId, Number(img.dataset.index));
      } catch {
        img.alt = "result no longer stored";
      }
    }
  }
}
