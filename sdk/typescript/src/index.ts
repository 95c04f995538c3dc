// @latentbridge/client: a typed client for a Latent Bridge server (docs/sdk.md).
export { LatentBridge, type ClientOptions, type GenerateOptions } from "./client.js";
export { Connection, PROTOCOL_VERSION, type ConnectionEvents, type ConnectionOptions, type WebSocketConstructor, type WebSocketLike } from "./socket.js";
export { Job, isImageFrame, type ImageFrame, type JobItem } from "./job.js";
export { LiveSession, IN_FLIGHT_TIMEOUT_MS, type LiveFrame, type LiveResult } from "./live.js";
export { HttpApi, API, WS_PATH, CLIENT_HEADER, splitUrl, type HttpOptions, type SubmitOptions } from "./http.js";
export { LatentBridgeError, ConnectionLost, errorFromBody } from "./errors.js";
export { encodeBinaryFrame, decodeBinaryFrame, sniffFormat, toBytes, MAX_BINARY_HEADER } from "./frames.js";
export { readPngText, readRecipe, REQUEST_CHUNK, PARAMETERS_CHUNK, type Recipe } from "./png.js";
export { readSse, type SseMessage } from "./sse.js";
export * from "./generated/openapi.js";
export type * from "./types.js";
