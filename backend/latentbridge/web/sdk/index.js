// @latentbridge/client: a typed client for a Latent Bridge server (docs/sdk.md).
export { LatentBridge } from "./client.js";
export { Connection, PROTOCOL_VERSION } from "./socket.js";
export { Job, isImageFrame } from "./job.js";
export { LiveSession, IN_FLIGHT_TIMEOUT_MS } from "./live.js";
export { HttpApi, API, WS_PATH, CLIENT_HEADER, splitUrl } from "./http.js";
export { LatentBridgeError, ConnectionLost, errorFromBody } from "./errors.js";
export { encodeBinaryFrame, decodeBinaryFrame, sniffFormat, toBytes, MAX_BINARY_HEADER } from "./frames.js";
export { readPngText, readRecipe, REQUEST_CHUNK, PARAMETERS_CHUNK } from "./png.js";
export { readSse } from "./sse.js";
export * from "./generated/openapi.js";
