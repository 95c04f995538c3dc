// Friendly names for the generated wire types (src/generated/openapi.ts). Nothing here is written
// by hand beyond the aliases: the shapes come from the server's OpenAPI document.
import type { components, paths } from "./generated/openapi.js";

type S = components["schemas"];

export type { components, paths };

export type GenerationRequest = S["GenerationRequest"];
export type Mode = S["Mode"];
export type Sampler = S["Sampler"];
export type Seamless = S["Seamless"];
export type MaskOptions = S["MaskOptions"];
export type OutpaintExtent = S["OutpaintExtent"];
export type LoraSpec = S["LoraSpec"];
export type PreviewOptions = S["PreviewOptions"];
export type ErrorCode = S["ErrorCode"];
export type JobState = S["JobState"];
export type ModelState = S["ModelState"];
export type ModelStatus = S["ModelStatus"];
export type Capabilities = S["Capabilities"];
export type Limits = S["Limits"];
export type BinaryHeader = S["BinaryHeader"];

// Websocket frames, client → server
export type ClientMessage = S["ClientMessage"];
export type HelloMessage = S["HelloMessage"];
export type SubmitMessage = S["SubmitMessage"];
export type CancelMessage = S["CancelMessage"];
export type AttachMessage = S["AttachMessage"];
export type PingMessage = S["PingMessage"];
export type LiveStartMessage = S["LiveStartMessage"];
export type LiveUpdateMessage = S["LiveUpdateMessage"];
export type LiveStopMessage = S["LiveStopMessage"];

// Events, server → client (websocket text frames and SSE payloads)
export type ServerEvent = S["ServerEvent"];
export type HelloEvent = S["HelloEvent"];
export type AcceptedEvent = S["AcceptedEvent"];
export type StartedEvent = S["StartedEvent"];
export type ProgressEvent = S["ProgressEvent"];
export type PreviewEvent = S["PreviewEvent"];
export type ResultEvent = S["ResultEvent"];
export type DoneEvent = S["DoneEvent"];
export type CancelledEvent = S["CancelledEvent"];
export type ErrorEvent = S["ErrorEvent"];
export type StatusEvent = S["StatusEvent"];
export type ModelEvent = S["ModelEvent"];
export type PongEvent = S["PongEvent"];
export type LiveStartedEvent = S["LiveStartedEvent"];
export type LiveUpdatedEvent = S["LiveUpdatedEvent"];
export type LiveStoppedEvent = S["LiveStoppedEvent"];
// Live sessions (docs/live.md)
export type LiveOptions = S["LiveOptions"];
export type LivePreset = S["LivePreset"];
export type LiveCounts = S["LiveCounts"];
export type LiveTimings = S["LiveTimings"];
/** The events that belong to one job. */
export type JobEvent = AcceptedEvent | StartedEvent | ProgressEvent | PreviewEvent | ResultEvent | DoneEvent
  | CancelledEvent | ErrorEvent | StatusEvent;

// REST bodies
export type SubmitBody = S["SubmitBody"];
export type HealthResponse = S["HealthResponse"];
export type ModelsResponse = S["ModelsResponse"];
export type ModelEntry = S["ModelEntry"];
export type HistoryResponse = S["HistoryResponse"];
export type CancelResponse = S["CancelResponse"];
export type LorasResponse = S["LorasResponse"];

export type Priority = NonNullable<SubmitMessage["priority"]>;
/** The role of an image in a job: "init", "mask", ... */
export type ImageRole = paths["/api/v1/jobs/{job_id}/inputs/{role}"]["get"]["parameters"]["path"]["role"];
/** Image bytes a client sends: PNG, JPEG or WebP. */
export type ImageInput = Uint8Array | ArrayBuffer | Blob;
