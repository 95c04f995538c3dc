// The recipe inside a result PNG: the server embeds the request that regenerates exactly that
// image (`latentbridge` text chunk, JSON) and AUTOMATIC1111's `parameters` text.
import { LatentBridgeError } from "./errors.js";
const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
export const REQUEST_CHUNK = "latentbridge";
export const PARAMETERS_CHUNK = "parameters";
const latin1 = new TextDecoder("latin1");
const utf8 = new TextDecoder("utf-8");
async function inflate(data) {
    const copy = new Uint8Array(data); // a stream wants a buffer of its own
    const stream = new Blob([copy]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
}
function indexOfZero(data, from) {
    const at = data.indexOf(0, from);
    if (at < 0)
        throw new LatentBridgeError("PNG text chunk without its separator", "bad_image");
    return at;
}
/** Every text chunk of a PNG (tEXt, zTXt, iTXt), keyword → text. */
export async function readPngText(png) {
    if (png.length < 8 || SIGNATURE.some((b, i) => png[i] !== b)) {
        throw new LatentBridgeError("not a PNG image", "bad_image");
    }
    const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
    const out = {};
    let at = 8;
    while (at + 8 <= png.length) {
        const length = view.getUint32(at, false);
        const type = latin1.decode(png.subarray(at + 4, at + 8));
        const data = png.subarray(at + 8, at + 8 + length);
        if (data.length < length)
            throw new LatentBridgeError("PNG is truncated", "bad_image");
        if (type === "tEXt" || type === "zTXt" || type === "iTXt") {
            const zero = indexOfZero(data, 0);
            const keyword = latin1.decode(data.subarray(0, zero));
            if (type === "tEXt") {
                out[keyword] = latin1.decode(data.subarray(zero + 1));
            }
            else if (type === "zTXt") {
                out[keyword] = latin1.decode(await inflate(data.subarray(zero + 2)));
            }
            else {
                const compressed = data[zero + 1] === 1;
                const languageEnd = indexOfZero(data, zero + 3);
                const translatedEnd = indexOfZero(data, languageEnd + 1);
                const text = data.subarray(translatedEnd + 1);
                out[keyword] = utf8.decode(compressed ? await inflate(text) : text);
            }
        }
        if (type === "IEND")
            break;
        at += 12 + length;
    }
    return out;
}
/** The recipe a result PNG carries (both parts null for a PNG from elsewhere). */
export async function readRecipe(png) {
    const text = await readPngText(png);
    let request = null;
    if (text[REQUEST_CHUNK] !== undefined) {
        try {
            request = JSON.parse(text[REQUEST_CHUNK]);
        }
        catch {
            throw new LatentBridgeError(`the \`${REQUEST_CHUNK}\` text chunk is not valid JSON`, "bad_image");
        }
    }
    return { request, parameters: text[PARAMETERS_CHUNK] ?? null };
}
