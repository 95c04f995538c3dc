// One result, with its full recipe (from the PNG itself: the request that regenerates exactly
// this image, and the AUTOMATIC1111 parameters text): copy, download, run again, vary seed.
import { readRecipe } from "../sdk/index.js";
import { $, clear, copyText, h, toast } from "./dom.js";
import { inputRoles, randomSeed } from "./recipe.js";

const SHOWN_FIELDS = ["mode", "prompt", "negative_prompt", "seed", "steps", "guidance", "strength", "sampler", "width",
  "height", "seamless", "model"];

export class Viewer {
  constructor(board, actions) {
    this.board = board;
    this.actions = actions; // { submit(request, images), edit(request, images), useAsInit(png) }
    this.dialog = $("#viewer");
    this.current = null;
    $("#viewer-close").addEventListener("click", () => this.dialog.close());
    this.dialog.addEventListener("close", () => (this.current = null));
    $("#copy-json").addEventListener("click", () => this.copy("json"));
    $("#copy-a1111").addEventListener("click", () => this.copy("a1111"));
    $("#run-again").addEventListener("click", () => this.rerun(false));
    $("#vary-seed").addEventListener("click", () => this.rerun(true));
    $("#edit-recipe").addEventListener("click", () => this.edit());
    $("#use-as-init").addEventListener("click", () => this.useAsInit());
  }

  async open(status, index) {
    const png = await this.board.png(status.job_id, index);
    const recipe = await readRecipe(png);
    // A PNG from elsewhere carries no recipe: the job's request with this image's seed is the same.
    const request = recipe.request ?? { ...status.request, seed: (status.request?.seed ?? 0) + index, batch_size: 1 };
    this.current = { status, index, png, request, parameters: recipe.parameters ?? "" };
    const url = await this.board.url(status.job_id, index);
    $("#viewer-image").src = url;
    $("#viewer-image").alt = request.prompt || "result";
    const download = $("#download");
    download.href = url;
    download.download = `latentbridge-${status.job_id.slice(0, 8)}-${index}-seed${request.seed}.png`;
    const table = clear($("#recipe-table"));
    for (const key of SHOWN_FIELDS) {
      if (key === "strength" && request.mode === "txt2img") continue; // not used by txt2img
      const value = request[key];
      if (value === undefined || value === null || value === "") continue;
      table.append(h("tr", {}, h("th", {}, key), h("td", {}, String(value))));
    }
    for (const lora of request.loras ?? []) table.append(h("tr", {}, h("th", {}, "lora"), h("td", {}, `${lora.name} × ${lora.weight}`)));
    $("#recipe-json").textContent = JSON.stringify(request, null, 2);
    $("#recipe-a1111").textContent = this.current.parameters;
    $("#use-as-init").hidden = !this.actions.canUseInit;
    if (!this.dialog.open) this.dialog.showModal();
  }

  async copy(kind) {
    if (!this.current) return;
    const text = kind === "json" ? JSON.stringify(this.current.request, null, 2) : this.current.parameters;
    try {
      await copyText(text);
      toast(kind === "json" ? "Recipe copied as JSON" : "Copied as A1111 parameters");
    } catch (error) {
      toast(`Copy failed: ${error.message}`, "error");
    }
  }

  /** The job's stored inputs (init, mask), so img2img/inpaint/outpaint run again exactly. */
  async inputs(request) {
    const images = {};
    for (const role of inputRoles(request)) images[role] = await this.board.lb.input(this.current.status.job_id, role);
    return images;
  }

  async rerun(varySeed) {
    if (!this.current) return;
    const request = { ...this.current.request, ...(varySeed ? { seed: randomSeed() } : {}) };
    try {
      await this.actions.submit(request, await this.inputs(request));
      this.dialog.close();
    } catch (error) {
      toast(`Could not run it again: ${error.message}`, "error");
    }
  }

  async edit() {
    if (!this.current) return;
    try {
      this.actions.edit(this.current.request, await this.inputs(this.current.request));
      this.dialog.close();
    } catch (error) {
      toast(`Could not load the recipe: ${error.message}`, "error");
    }
  }

  useAsInit() {
    if (!this.current) return;
    this.actions.useAsInit(this.current.png);
    this.dialog.close();
  }
}
