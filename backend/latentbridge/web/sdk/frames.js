// Binary websocket frames (docs/protocol.md): u32 big-endian header length, UTF-8 JSON
// `BinaryHeader`, then the payload bytes. The checks follow the rules in tests/vectors/README.md.
import { LatentBridgeError } from "./errors.js";
import { binaryHeaderFormatValues, binaryHeaderKindValues } from "./generated/openapi.js";
export const MAX_BINARY_HEADER = 4096;
// Every field of BinaryHeader (checked against the generated type by the compiler), in the
// protocol's field order: the order the server encodes them in (pinned by tests/vectors/binary).
const HEADER_FIELDS = {
    kind: true, format: true, job_id: true, upload_id: true, index: true, step: true, total: true, width: true, height: true,
    frame: true, revision: true, parts: true, timings: true,
};
const RAW_KINDS = new Set(["preview", "live_frame", "live_result"]);
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });
function badFrame(message, field = null) {
    return new LatentBridgeError(message, "bad_message", { field });
}
const MAX_CONTROLS = 4;
const LIVE_ROLES = new Set(["init", ...Array.from({ length: MAX_CONTROLS }, (_, i) => `control.${i}`)]);
const TIMING_FIELDS = ["wait", "decode", "setup", "denoise", "vae", "encode"];
/** A header field's value as the server encodes it: live parts and timings in the protocol's key order. */
function ordered(key, value) {
    if (key === "parts" && Array.isArray(value)) {
        return value.map((part) => ({ role: part.role, bytes: part.bytes }));
    }
    if (key === "timings" && value && typeof value === "object") {
        const timings = value;
        return Object.fromEntries(TIMING_FIELDS.filter((k) => timings[k] !== null && timings[k] !== undefined).map((k) => [k, timings[k]]));
    }
    return value;
}
/** One frame: the header's fields in protocol order, nulls left out (as the server encodes it). */
export function encodeBinaryFrame(header, payload) {
    const fields = Object.keys(HEADER_FIELDS);
    const clean = Object.fromEntries(fields.filter((k) => header[k] !== null && header[k] !== undefined)
        .map((k) => [k, ordered(k, header[k])]));
    const head = encoder.encode(JSON.stringify(clean));
    const frame = new Uint8Array(4 + head.length + payload.length);
    new DataView(frame.buffer).setUint32(0, head.length, false);
    frame.set(head, 4);
    frame.set(payload, 4 + head.length);
    return frame;
}
function checkHeader(data) {
    for (const key of Object.keys(data)) {
        if (!(key in HEADER_FIELDS))
            throw badFrame(`unknown binary header field ${JSON.stringify(key)}`, `header.${key}`);
    }
    if (!binaryHeaderKindValues.includes(data.kind)) {
        throw badFrame(`binary header kind must be one of ${binaryHeaderKindValues.join(", ")}`, "header.kind");
    }
    if (!binaryHeaderFormatValues.includes(data.format)) {
        throw badFrame(`binary header format must be one of ${binaryHeaderFormatValues.join(", ")}`, "header.format");
    }
    const header = data;
    if (header.kind === "upload" && !header.upload_id)
        throw badFrame("upload frames need `upload_id`", "header");
    if (header.kind !== "upload" && !header.job_id)
        throw badFrame(`${header.kind} frames need \`job_id\``, "header");
    if (header.format === "rgb" && (!RAW_KINDS.has(header.kind) || !header.width || !header.height)) {
        throw badFrame("raw `rgb` payloads are for preview and live frames only, with width and height", "header");
    }
    checkLive(header);
    return header;
}
/** The live frames' rules (docs/live.md): a frame number, and `parts` on live_frame frames only. */
function checkLive(header) {
    const live = header.kind === "live_frame" || header.kind === "live_result";
    if (live && (header.frame === null || header.frame === undefined))
        throw badFrame(`${header.kind} frames need \`frame\``, "header");
    const parts = header.parts ?? null;
    if ((header.kind === "live_frame") !== (parts !== null)) {
        throw badFrame("`parts` is required on live_frame frames and only there", "header");
    }
    if (parts === null)
        return;
    if (!Array.isArray(parts) || parts.length < 1 || parts.length > 1 + MAX_CONTROLS) {
        throw badFrame(`header.parts: 1 to ${1 + MAX_CONTROLS} parts`, "header.parts");
    }
    parts.forEach((part, i) => {
        if (!LIVE_ROLES.has(part?.role))
            throw badFrame(`header.parts.${i}.role: init or control.<i>`, `header.parts.${i}.role`);
        if (!Number.isInteger(part.bytes) || part.bytes < 1) {
            throw badFrame(`header.parts.${i}.bytes: a positive length`, `header.parts.${i}.bytes`);
        }
    });
    if (new Set(parts.map((p) => p.role)).size !== parts.length)
        throw badFrame("each role appears once in `parts`", "header");
    if (header.format === "rgb" && parts.some((p) => p.bytes !== (header.width ?? 0) * (header.height ?? 0) * 3)) {
        throw badFrame("raw `rgb` parts are width * height * 3 bytes each", "header");
    }
}
/** Split a frame into its header and payload, or throw a `bad_message` error saying what is wrong. */
export function decodeBinaryFrame(frame) {
    const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
    if (bytes.length < 4)
        throw badFrame("binary frame shorter than its 4-byte header length");
    const n = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, false);
    if (n === 0 || n > MAX_BINARY_HEADER)
        throw badFrame(`binary header length ${n} out of range 1..${MAX_BINARY_HEADER}`);
    if (bytes.length < 4 + n)
        throw badFrame("binary frame truncated inside its header");
    let data;
    try {
        data = JSON.parse(decoder.decode(bytes.subarray(4, 4 + n)));
    }
    catch {
        throw badFrame("binary header is not valid JSON");
    }
    if (!data || typeof data !== "object" || Array.isArray(data))
        throw badFrame("binary header must be a JSON object");
    return { header: checkHeader(data), payload: bytes.subarray(4 + n) };
}
/** The wire format name of encoded image bytes; a `bad_image` error before anything is sent. */
export function sniffFormat(data) {
    const ascii = (start, end) => String.fromCharCode(...data.subarray(start, end));
    if (data.length >= 8 && data[0] === 0x89 && ascii(1, 4) === "PNG")
        return "png";
    if (data.length >= 3 && data[0] === 0xff && data[1] === 0xd8 && data[2] === 0xff)
        return "jpeg";
    if (data.length >= 12 && ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP")
        return "webp";
    throw new LatentBridgeError("image bytes are not PNG, JPEG or WebP", "bad_image", { field: "images" });
}
/** Image input (bytes, ArrayBuffer or Blob/File) as bytes. */
export async function toBytes(image) {
    if (image instanceof Uint8Array)
        return image;
    if (image instanceof ArrayBuffer)
        return new Uint8Array(image);
    return new Uint8Array(await image.arrayBuffer());
}
