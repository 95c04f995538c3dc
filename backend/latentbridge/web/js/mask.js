// The inpainting mask, painted over the init image (or uploaded and then touched up). It is kept
// at the init image's own size, as the server requires; white = repaint.
import { $, h } from "./dom.js";

const INK = "rgb(255, 40, 90)"; // what a painted pixel looks like on screen (the overlay is half transparent)

export class MaskPainter {
  constructor(root) {
    this.root = root;
    this.image = h("canvas.mask-image", { width: 1, height: 1 });
    this.overlay = h("canvas.mask-overlay", { width: 1, height: 1, ariaLabel: "mask: paint where to repaint" });
    this.brush = $("#mask-brush");
    this.erase = $("#mask-erase");
    this.hasImage = false;
    root.replaceChildren(this.image, this.overlay);
    this.bindPointer();
    $("#mask-clear").addEventListener("click", () => this.clear());
    $("#mask-invert").addEventListener("click", () => this.invert());
  }

  get ctx() {
    return this.overlay.getContext("2d", { willReadFrequently: true });
  }

  /** The init image to paint over (a Blob); clears the mask when the size changes. */
  async setImage(blob) {
    const bitmap = await createImageBitmap(blob);
    const resized = bitmap.width !== this.image.width || bitmap.height !== this.image.height;
    for (const canvas of [this.image, this.overlay]) {
      if (resized) {
        canvas.width = bitmap.width;
        canvas.height = bitmap.height;
      }
    }
    this.image.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    this.hasImage = true;
    if (resized) this.clear();
  }

  reset() {
    this.hasImage = false;
    for (const canvas of [this.image, this.overlay]) {
      canvas.width = 1;
      canvas.height = 1;
    }
  }

  clear() {
    this.ctx.clearRect(0, 0, this.overlay.width, this.overlay.height);
  }

  /** Replace the mask with an uploaded one (scaled to the image; luminance = how much to repaint). */
  async load(blob) {
    const bitmap = await createImageBitmap(blob, { resizeWidth: this.overlay.width, resizeHeight: this.overlay.height });
    const scratch = h("canvas", { width: this.overlay.width, height: this.overlay.height });
    const sctx = scratch.getContext("2d", { willReadFrequently: true });
    sctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    const pixels = sctx.getImageData(0, 0, scratch.width, scratch.height);
    const d = pixels.data;
    for (let i = 0; i < d.length; i += 4) {
      // Luminance, times the upload's own alpha (a painted-alpha mask counts as white where painted).
      const value = Math.round((0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]) * (d[i + 3] / 255));
      d[i] = 255;
      d[i + 1] = 40;
      d[i + 2] = 90;
      d[i + 3] = value;
    }
    this.ctx.putImageData(pixels, 0, 0);
  }

  invert() {
    const pixels = this.ctx.getImageData(0, 0, this.overlay.width, this.overlay.height);
    const d = pixels.data;
    for (let i = 0; i < d.length; i += 4) {
      d[i] = 255;
      d[i + 1] = 40;
      d[i + 2] = 90;
      d[i + 3] = 255 - d[i + 3];
    }
    this.ctx.putImageData(pixels, 0, 0);
  }

  isEmpty() {
    const d = this.ctx.getImageData(0, 0, this.overlay.width, this.overlay.height).data;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return false;
    return true;
  }

  /** The mask as a PNG Blob: grey levels, white = repaint, the init image's size. */
  toPng() {
    const { width, height } = this.overlay;
    const source = this.ctx.getImageData(0, 0, width, height).data;
    const out = h("canvas", { width, height });
    const octx = out.getContext("2d");
    const pixels = octx.createImageData(width, height);
    for (let i = 0; i < source.length; i += 4) {
      pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = source[i + 3];
      pixels.data[i + 3] = 255;
    }
    octx.putImageData(pixels, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  bindPointer() {
    let last = null;
    const point = (event) => {
      const rect = this.overlay.getBoundingClientRect();
      return {
        x: ((event.clientX - rect.left) / rect.width) * this.overlay.width,
        y: ((event.clientY - rect.top) / rect.height) * this.overlay.height,
      };
    };
    const stroke = (from, to) => {
      const ctx = this.ctx;
      ctx.globalCompositeOperation = this.erase.checked ? "destination-out" : "source-over";
      ctx.strokeStyle = ctx.fillStyle = INK;
      ctx.lineWidth = Number(this.brush.value);
      ctx.lineCap = ctx.lineJoin = "round";
      ctx.beginPath();
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x + 0.01, to.y);
      ctx.stroke();
      ctx.globalCompositeOperation = "source-over";
    };
    this.overlay.addEventListener("pointerdown", (event) => {
      if (!this.hasImage) return;
      this.overlay.setPointerCapture(event.pointerId);
      last = point(event);
      stroke(last, last);
    });
    this.overlay.addEventListener("pointermove", (event) => {
      if (!last) return;
      const next = point(event);
      stroke(last, next);
      last = next;
    });
    const end = () => (last = null);
    this.overlay.addEventListener("pointerup", end);
    this.overlay.addEventListener("pointercancel", end);
  }
}
