// What a request says, in a line, and the requests for "run again" / "vary seed".

const MAX_SEED = 2 ** 32 - 1;

export function describe(request) {
  if (!request) return "";
  const parts = [request.mode ?? "txt2img", `${request.width ?? 512}×${request.height ?? 512}`, `${request.steps ?? 20} steps`];
  if (request.sampler) parts.push(request.sampler);
  if (request.seamless && request.seamless !== "none") parts.push(`seamless ${request.seamless}`);
  if ((request.batch_size ?? 1) > 1) parts.push(`×${request.batch_size}`);
  return parts.join(" · ");
}

export function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0] % (MAX_SEED + 1);
}

/** The images a request needs besides itself (the protocol's rule: every mode but txt2img takes
 * an init image; inpaint takes a mask too). */
export function inputRoles(request) {
  const mode = request?.mode ?? "txt2img";
  if (mode === "txt2img") return [];
  return mode === "inpaint" ? ["init", "mask"] : ["init"];
}
