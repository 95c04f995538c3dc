// The submit form. Its choices come from the server: modes, samplers, seamless axes, preview
// decoders and limits from the websocket `hello` capabilities; models and LoRAs from the API;
// defaults, ranges and help texts from the published schema of GenerationRequest.
import { $, clear, h, toast } from "./dom.js";
import { MaskPainter } from "./mask.js";
import { inputRoles, randomSeed } from "./recipe.js";

const SAVED = "latentbridge.form"; // the last request (no images, no token), for this tab
// Number inputs: element id → [schema, field].
const NUMBERS = {
  steps: ["GenerationRequest", "steps"], guidance: ["GenerationRequest", "guidance"],
  strength: ["GenerationRequest", "strength"], width: ["GenerationRequest", "width"],
  height: ["GenerationRequest", "height"], batch_size: ["GenerationRequest", "batch_size"],
  seed: ["GenerationRequest", "seed"],
  "mask-blur": ["MaskOptions", "blur"], "mask-padding": ["MaskOptions", "padding"],
  "outpaint-left": ["OutpaintExtent", "left"], "outpaint-top": ["OutpaintExtent", "top"],
  "outpaint-right": ["OutpaintExtent", "right"], "outpaint-bottom": ["OutpaintExtent", "bottom"],
};
// Where a server error's `field` points in the form.
const FIELD_TARGETS = {
  init_image: "init-section", "images.init": "init-section", mask: "mask-section", "images.mask": "mask-section",
  "mask.blur": "mask-blur", "mask.padding": "mask-padding", negative_prompt: "negative_prompt", loras: "loras",
  outpaint: "outpaint-section", request: "prompt",
};

/** A property of a schema, `anyOf: [x, null]` unwrapped. */
function property(schemas, model, field) {
  const prop = schemas[model]?.properties?.[field] ?? {};
  const inner = prop.anyOf?.find((s) => s.type !== "null") ?? {};
  return { ...inner, ...prop };
}

function pickOptions(select, values, selected, label = (v) => v) {
  clear(select).append(...values.map((v) => h("option", { value: v, selected: v === selected }, label(v))));
}

export class SubmitForm {
  constructor({ capabilities, schemas, models, loras, onSubmit }) {
    this.capabilities = capabilities;
    this.schemas = schemas;
    this.models = models;
    this.loras = loras;
    this.onSubmit = onSubmit;
    this.initBlob = null;
    this.form = $("#submit-form");
    this.painter = new MaskPainter($("#mask-canvas"));
    this.build();
    this.restore();
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.form.addEventListener("change", () => this.showSections());
  }

  // ------------------------------------------------------------------ building from the server

  build() {
    for (const [id, [model, field]] of Object.entries(NUMBERS)) {
      const input = $(`#${id}`);
      const prop = property(this.schemas, model, field);
      if (prop.minimum !== undefined) input.min = prop.minimum;
      if (prop.maximum !== undefined) input.max = prop.maximum;
      if (prop.multipleOf !== undefined) input.step = prop.multipleOf;
      if (prop.default !== undefined && prop.default !== null) input.value = prop.default;
      if (prop.description) input.title = prop.description;
    }
    for (const id of ["prompt", "negative_prompt"]) {
      const prop = property(this.schemas, "GenerationRequest", id);
      if (prop.maxLength) $(`#${id}`).maxLength = prop.maxLength;
    }
    const priorities = property(this.schemas, "SubmitMessage", "priority");
    pickOptions($("#priority"), priorities.enum ?? ["normal"], priorities.default ?? "normal");
    $("#mask-invert-opt").checked = !!property(this.schemas, "MaskOptions", "invert").default;
    $("#mask-only-masked").checked = !!property(this.schemas, "MaskOptions", "only_masked").default;
    this.applyCapabilities(this.capabilities);
    this.buildModels();
    this.buildLoras();
    $("#seed-random").addEventListener("click", () => ($("#seed").value = randomSeed()));
    $("#init-file").addEventListener("change", (e) => e.target.files[0] && this.setInit(e.target.files[0]));
    $("#init-clear").addEventListener("click", () => this.setInit(null));
    $("#mask-file").addEventListener("change", (e) => e.target.files[0] && this.loadMask(e.target.files[0]));
    const drop = $("#init-section");
    drop.addEventListener("dragover", (e) => e.preventDefault());
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      const file = e.dataTransfer.files[0];
      if (file) this.setInit(file);
    });
  }

  /** Modes, samplers, seamless axes, preview decoders and limits: at start, and again when the
   * loaded model changes (an SD3 or Flux model samples with Euler only and cannot tile). What the
   * user chose stays chosen while the server still offers it. */
  applyCapabilities(caps) {
    this.capabilities = caps;
    const offered = { sampler: caps.samplers, seamless: caps.seamless, "preview-decoder": caps.preview_decoders };
    const keep = (id, fallback) => (offered[id].includes($(`#${id}`).value) ? $(`#${id}`).value : fallback);
    const mode = caps.modes.includes(this.form.elements.mode?.value) ? this.form.elements.mode.value : caps.modes[0];
    clear($("#modes")).append(...caps.modes.map((m) => h("label.mode", {},
      h("input", { type: "radio", name: "mode", value: m, checked: m === mode }), h("span", {}, m))));
    const samplerDefault = property(this.schemas, "GenerationRequest", "sampler").default;
    pickOptions($("#sampler"), caps.samplers, keep("sampler", caps.samplers.includes(samplerDefault) ? samplerDefault : caps.samplers[0]));
    pickOptions($("#seamless"), caps.seamless, keep("seamless", "none"), (v) => (v === "none" ? "off" : `wrap ${v}`));
    $("#seamless-field").hidden = caps.seamless.length < 2;
    pickOptions($("#preview-decoder"), caps.preview_decoders,
      keep("preview-decoder", property(this.schemas, "PreviewOptions", "decoder").default));
    // The server's configured limits are tighter than the schema's hard ceilings.
    const limits = caps.limits;
    for (const [id, limit] of [["width", limits.max_width], ["height", limits.max_height], ["steps", limits.max_steps],
      ["batch_size", limits.max_batch]]) {
      const [model, field] = NUMBERS[id];
      $(`#${id}`).max = Math.min(property(this.schemas, model, field).maximum ?? limit, limit);
    }
    this.showSections();
  }

  setModels(models) {
    this.models = models;
    this.buildModels();
  }

  buildModels() {
    const chosen = $("#model").value;
    const { current, configured, builtin, models } = this.models;
    const names = [...new Set([configured, ...builtin, ...models.map((m) => m.name)].filter((n) => n && n !== current.name))];
    const select = $("#model");
    clear(select).append(h("option", { value: "" }, `${current.name ?? "loaded model"}${current.family ? ` (${current.family})` : ""}`),
      ...names.map((name) => h("option", { value: name, selected: name === chosen }, name)));
    $("#model-field").title = "Another model loads for the job (the loaded one is unloaded)";
  }

  buildLoras() {
    const add = $("#add-lora");
    const max = this.schemas.GenerationRequest?.properties?.loras?.maxItems ?? 8;
    add.disabled = this.loras.length === 0;
    add.title = this.loras.length ? "" : "No LoRA files in the server's --lora-dirs";
    add.onclick = () => $("#loras").children.length < max && this.addLora();
  }

  addLora(spec = {}) {
    const weight = property(this.schemas, "LoraSpec", "weight");
    const name = h("select.lora-name", { ariaLabel: "LoRA" });
    pickOptions(name, this.loras.includes(spec.name) || !spec.name ? this.loras : [spec.name, ...this.loras], spec.name);
    const row = h("div.lora-row", {}, name,
      h("input.lora-weight", { type: "number", step: 0.05, min: weight.minimum, max: weight.maximum,
        value: spec.weight ?? weight.default ?? 1, ariaLabel: "weight" }),
      h("button.secondary", { type: "button", onclick: () => row.remove(), ariaLabel: "remove LoRA" }, "×"));
    $("#loras").append(row);
  }

  // ------------------------------------------------------------------ mode-dependent parts

  get mode() {
    return this.form.elements.mode.value || "txt2img";
  }

  showSections() {
    const roles = inputRoles({ mode: this.mode });
    $("#init-section").hidden = !roles.includes("init");
    $("#mask-section").hidden = !roles.includes("mask");
    $("#outpaint-section").hidden = this.mode !== "outpaint";
    $("#strength-field").hidden = this.mode === "txt2img";
    $("#init-preview").hidden = !this.initBlob || roles.includes("mask"); // the mask painter shows it
  }

  setMode(mode) {
    const radio = [...this.form.elements.mode].find((r) => r.value === mode);
    if (radio) radio.checked = true;
    this.showSections();
  }

  /** The init image (a Blob or null); its size becomes the request's size (multiples of 8). */
  async setInit(blob) {
    this.initBlob = blob;
    const preview = $("#init-preview");
    if (!blob) {
      preview.hidden = true;
      preview.removeAttribute("src");
      this.painter.reset();
      $("#init-file").value = "";
      return;
    }
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(blob);
    await this.painter.setImage(blob);
    this.showSections();
    const fit = (value, id) => Math.max(Number($(`#${id}`).min) || 64, Math.min(Number($(`#${id}`).max), Math.floor(value / 8) * 8));
    $("#width").value = fit(this.painter.image.width, "width");
    $("#height").value = fit(this.painter.image.height, "height");
  }

  async loadMask(blob) {
    if (!this.initBlob) {
      toast("Choose the init image first: the mask is painted over it", "error");
      return;
    }
    await this.painter.load(blob);
  }

  // ------------------------------------------------------------------ the request

  number(id) {
    const value = $(`#${id}`).value;
    return value === "" ? null : Number(value);
  }

  request() {
    const mode = this.mode;
    const request = {
      mode, prompt: $("#prompt").value, negative_prompt: $("#negative_prompt").value,
      steps: this.number("steps"), guidance: this.number("guidance"), width: this.number("width"),
      height: this.number("height"), sampler: $("#sampler").value, batch_size: this.number("batch_size"),
      seamless: $("#seamless").value, preview: { decoder: $("#preview-decoder").value },
    };
    const seed = this.number("seed");
    if (seed !== null) request.seed = seed;
    if (mode !== "txt2img") request.strength = this.number("strength");
    if (mode === "inpaint") {
      request.mask = { blur: this.number("mask-blur"), invert: $("#mask-invert-opt").checked,
        only_masked: $("#mask-only-masked").checked, padding: this.number("mask-padding") };
    }
    if (mode === "outpaint") {
      request.outpaint = Object.fromEntries(["left", "top", "right", "bottom"].map((s) => [s, this.number(`outpaint-${s}`) ?? 0]));
    }
    if ($("#model").value) request.model = $("#model").value;
    const loras = [...$("#loras").children].map((row) => ({ name: $(".lora-name", row).value, weight: Number($(".lora-weight", row).value) }));
    if (loras.length) request.loras = loras;
    return request;
  }

  async images(request) {
    const roles = inputRoles(request);
    const images = {};
    if (roles.includes("init")) {
      if (!this.initBlob) throw this.fieldError("init-section", `${request.mode} needs an init image: choose or drop one`);
      images.init = this.initBlob;
    }
    if (roles.includes("mask")) {
      if (this.painter.isEmpty()) throw this.fieldError("mask-section", "Paint the area to repaint (or upload a mask)");
      images.mask = await this.painter.toPng();
    }
    return images;
  }

  async submit() {
    this.clearError();
    const button = $("#submit");
    button.disabled = true;
    try {
      const request = this.request();
      const images = await this.images(request);
      sessionStorage.setItem(SAVED, JSON.stringify(request));
      await this.onSubmit(request, images, $("#priority").value);
    } catch (error) {
      this.showError(error);
    } finally {
      button.disabled = false;
    }
  }

  fieldError(target, message) {
    return Object.assign(new Error(message), { field: `form:${target}` });
  }

  clearError() {
    $("#form-error").textContent = "";
    for (const el of this.form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  /** A typed error from the server (or the form), next to the field it names. */
  showError(error) {
    $("#form-error").textContent = error.message;
    const field = String(error.field ?? "").replace(/^request\./, "");
    const id = field.startsWith("form:") ? field.slice(5)
      : FIELD_TARGETS[field] ?? FIELD_TARGETS[field.split(".")[0]] ?? field.replace(/^(mask|outpaint)\./, "$1-");
    const target = id && document.getElementById(id);
    if (target) {
      target.setAttribute("aria-invalid", "true");
      target.scrollIntoView({ block: "nearest" });
    }
  }

  // ------------------------------------------------------------------ loading a recipe

  /** Fill the form from a request (and its images): "edit" in the result viewer, and a reload. */
  async load(request, images = {}) {
    const set = (id, value) => value !== undefined && value !== null && ($(`#${id}`).value = value);
    if (this.capabilities.modes.includes(request.mode)) this.setMode(request.mode);
    set("prompt", request.prompt);
    set("negative_prompt", request.negative_prompt);
    for (const id of ["steps", "guidance", "strength", "width", "height", "batch_size"]) set(id, request[id]);
    $("#seed").value = request.seed ?? "";
    if (this.capabilities.samplers.includes(request.sampler)) set("sampler", request.sampler);
    if (this.capabilities.seamless.includes(request.seamless)) set("seamless", request.seamless);
    if (request.preview?.decoder && this.capabilities.preview_decoders.includes(request.preview.decoder)) {
      set("preview-decoder", request.preview.decoder);
    }
    const models = [...$("#model").options].map((o) => o.value);
    $("#model").value = models.includes(request.model ?? "") ? request.model ?? "" : "";
    if (request.mask) {
      set("mask-blur", request.mask.blur);
      set("mask-padding", request.mask.padding);
      $("#mask-invert-opt").checked = !!request.mask.invert;
      $("#mask-only-masked").checked = !!request.mask.only_masked;
    }
    for (const side of ["left", "top", "right", "bottom"]) set(`outpaint-${side}`, request.outpaint?.[side]);
    clear($("#loras"));
    for (const lora of request.loras ?? []) this.addLora(lora);
    if (images.init) {
      await this.setInit(new Blob([images.init], { type: "image/png" }));
      for (const id of ["width", "height"]) set(id, request[id]); // the recipe's size, not the image's
    }
    if (images.mask) await this.painter.load(new Blob([images.mask], { type: "image/png" }));
    this.showSections();
  }

  restore() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(SAVED) ?? "null");
      if (saved) this.load(saved);
    } catch {
      sessionStorage.removeItem(SAVED);
    }
  }
}
