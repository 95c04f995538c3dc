// The HTTP API under /api/v1 (docs/http-api.md): every route, typed by the generated types.
import { errorFromBody, LatentBridgeError } from "./errors.js";
import { sniffFormat, toBytes } from "./frames.js";
import { readSse } from "./sse.js";
export const API = "/api/v1";
export const WS_PATH = `${API}/ws`;
/** Header that marks a request as coming from a program (plain HTML forms cannot set it). */
export const CLIENT_HEADER = "X-LatentBridge-Client";
/** (http base, websocket url) from an http(s):// or ws(s):// server address. */
export function splitUrl(url) {
    let base = url.replace(/\/+$/, "");
    if (base.endsWith(WS_PATH))
        base = base.slice(0, -WS_PATH.length);
    if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(base))
        base = `http://${base}`;
    const parsed = new URL(base);
    const scheme = { "ws:": "http:", "wss:": "https:" }[parsed.protocol] ?? parsed.protocol;
    const httpBase = `${scheme}//${parsed.host}${parsed.pathname.replace(/\/+$/, "")}`;
    const wsScheme = scheme === "https:" ? "wss:" : "ws:";
    return { httpBase, wsUrl: `${wsScheme}//${parsed.host}${parsed.pathname.replace(/\/+$/, "")}${WS_PATH}` };
}
export class HttpApi {
    baseUrl;
    token;
    clientName;
    fetchImpl;
    constructor(url, options = {}) {
        this.baseUrl = splitUrl(url).httpBase;
        this.token = options.token ?? null;
        this.clientName = options.clientName ?? "latentbridge-ts";
        this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    }
    /** One request; typed error on any non-2xx answer. */
    async request(method, path, init = {}) {
        const headers = { [CLIENT_HEADER]: this.clientName };
        if (this.token)
            headers.Authorization = `Bearer ${this.token}`;
        let body = init.body;
        if (init.json !== undefined) {
            headers["Content-Type"] = "application/json";
            body = JSON.stringify(init.json);
        }
        const response = await this.fetchImpl(this.baseUrl + path, { method, headers, body, signal: init.signal });
        if (!response.ok)
            throw errorFromBody(response.status, await response.text());
        return response;
    }
    async json(method, path, json) {
        return (await (await this.request(method, path, { json })).json());
    }
    async bytes(path) {
        return new Uint8Array(await (await this.request("GET", path)).arrayBuffer());
    }
    health() {
        return this.json("GET", `${API}/health`);
    }
    models() {
        return this.json("GET", `${API}/models`);
    }
    /** Load a model by name (waits for the running job); the new model status. */
    loadModel(model) {
        return this.json("POST", `${API}/models/load`, { model });
    }
    /** What the server can do now (as in `hello`; samplers and seamless follow the loaded model). */
    capabilities() {
        return this.json("GET", `${API}/capabilities`);
    }
    /** LoRA file names a request may use in `loras[].name`. */
    async loras() {
        return (await this.json("GET", `${API}/loras`)).loras.map((l) => l.name);
    }
    /** Jobs of every client, live ones first, then finished ones; newest first. */
    async history(limit = 50) {
        return (await this.json("GET", `${API}/jobs?limit=${encodeURIComponent(limit)}`)).jobs;
    }
    status(jobId) {
        return this.json("GET", `${API}/jobs/${encodeURIComponent(jobId)}`);
    }
    /** Submit over HTTP (multipart: image bytes as files, no base64). */
    async submitHttp(request, options = {}) {
        const form = new FormData();
        form.append("request", JSON.stringify(request));
        form.append("priority", options.priority ?? "normal");
        for (const [name, image] of [["init_image", options.initImage], ["mask", options.mask]]) {
            if (image) {
                const bytes = await toBytes(image);
                form.append(name, new Blob([new Uint8Array(bytes)], { type: `image/${sniffFormat(bytes)}` }), `${name}.img`);
            }
        }
        return (await (await this.request("POST", `${API}/jobs`, { body: form })).json());
    }
    /** A job's events over server-sent events, until its final event (previews as base64 JSON). */
    async *eventsHttp(jobId, signal) {
        const response = await this.request("GET", `${API}/jobs/${encodeURIComponent(jobId)}/events`, { signal });
        if (!response.body)
            throw new LatentBridgeError("the event stream has no body", "internal");
        for await (const message of readSse(response.body)) {
            const event = JSON.parse(message.data);
            yield event;
            if (event.type === "done" || event.type === "cancelled" || event.type === "error")
                return;
        }
    }
    cancelHttp(jobId) {
        return this.json("POST", `${API}/jobs/${encodeURIComponent(jobId)}/cancel`);
    }
    /** A result PNG (the request that made it is embedded: see `readRecipe`). */
    result(jobId, index) {
        return this.bytes(`${API}/jobs/${encodeURIComponent(jobId)}/results/${index}`);
    }
    /** A job's stored input image (`init` or `mask`), to run the job again. */
    input(jobId, role) {
        return this.bytes(`${API}/jobs/${encodeURIComponent(jobId)}/inputs/${role}`);
    }
    /** The OpenAPI document the SDK's types are generated from. */
    openapi() {
        return this.json("GET", `${API}/openapi.json`);
    }
}
