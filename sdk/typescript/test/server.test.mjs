// The SDK against the real server (tiny model), over the websocket and HTTP.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { WebSocket as NodeWebSocket } from "ws";
import {
  ConnectionLost, decodeBinaryFrame, isImageFrame, LatentBridge, LatentBridgeError, readRecipe, sniffFormat,
} from "../dist/index.js";
import { startServer, tinyRequest, vector, vectorJson, vectorNames } from "./helpers.mjs";

const TOKEN = "correct-horse-battery-staple";
let open;
let guarded;

before(async () => {
  [open, guarded] = await Promise.all([startServer(), startServer({ token: TOKEN })]);
});

after(async () => {
  await Promise.all([open?.stop(), guarded?.stop()]);
});

function client(options = {}) {
  return new LatentBridge(open.url, { clientName: "sdk-tests", ...options });
}

/** A WebSocket class that keeps every socket it opens, so a test can drop one. */
function trackedWebSockets() {
  const sockets = [];
  class TrackedWebSocket extends NodeWebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  return { sockets, TrackedWebSocket };
}

/** A job long enough to watch and cancel on the tiny model. */
const longRequest = () => tinyRequest({ steps: 150, width: 256, height: 256 });

describe("REST", () => {
  test("health, models, LoRAs, OpenAPI", async () => {
    const lb = client();
    const health = await lb.health();
    assert.equal(health.status, "ok");
    assert.equal(health.model.name, "tiny");
    const models = await lb.models();
    assert.equal(models.current.state, "ready");
    assert.deepEqual(await lb.loras(), []);
    const connection = await lb.connect();
    assert.deepEqual(await lb.capabilities(), connection.capabilities);
    await lb.close();
    const doc = await lb.openapi();
    assert.ok(doc.components.schemas.ServerEvent, "the websocket types are published too");
  });

  test("submit over HTTP, follow the SSE stream, fetch the result and the history", async () => {
    const lb = client();
    const accepted = await lb.submitHttp(tinyRequest({ prompt: "over http" }));
    const types = [];
    for await (const event of lb.eventsHttp(accepted.job_id)) types.push(event.type);
    assert.equal(types.at(-1), "done");
    assert.ok(types.includes("result"));
    const png = await lb.result(accepted.job_id, 0);
    assert.equal(sniffFormat(png), "png");
    const history = await lb.history(10);
    assert.equal(history[0].job_id, accepted.job_id);
    assert.equal((await lb.status(accepted.job_id)).state, "done");
  });

  test("errors are typed, with the server's code and field", async () => {
    const lb = client();
    await assert.rejects(lb.submitHttp(tinyRequest({ steps: 1000 })),
      (e) => e instanceof LatentBridgeError && e.code === "invalid_request" && e.field === "request.steps" && e.status === 422);
    await assert.rejects(lb.status("0".repeat(32)), (e) => e.code === "unknown_job" && e.status === 404);
    await assert.rejects(lb.submitHttp(tinyRequest(), { initImage: new Uint8Array([1, 2, 3]) }),
      (e) => e.code === "bad_image", "non-image bytes are refused before anything is sent");
  });
});

describe("websocket", () => {
  test("the handshake reports capabilities and the model, as in the vector", async () => {
    const lb = client();
    const connection = await lb.connect();
    const expected = vectorJson("server/hello.json");
    assert.deepEqual(Object.keys(connection.hello).sort(), Object.keys(expected).sort());
    assert.deepEqual(Object.keys(connection.capabilities).sort(), Object.keys(expected.capabilities).sort());
    assert.ok(connection.capabilities.modes.includes("inpaint"));
    assert.equal(connection.model.state, "ready");
    assert.ok((await connection.ping()) >= 0);
    await lb.close();
  });

  test("generate: progress, previews and a result that carries its recipe; same bytes over HTTP", async () => {
    const lb = client();
    const request = tinyRequest({ steps: 4, prompt: "weathered bronze, verdigris" });
    const progress = [];
    const previews = [];
    const [png] = await lb.generate(request, {
      onProgress: (p) => progress.push(p.step),
      onPreview: (data, header) => previews.push({ data, header }),
    });
    assert.deepEqual(progress, [1, 2, 3, 4]);
    assert.ok(previews.length >= 1);
    assert.equal(sniffFormat(previews[0].data), "jpeg");
    assert.equal(previews[0].header.total, 4);
    const recipe = await readRecipe(png);
    assert.equal(recipe.request.prompt, request.prompt);
    assert.equal(recipe.request.seed, request.seed);
    assert.equal(recipe.request.batch_size, 1);
    assert.match(recipe.parameters, /^weathered bronze, verdigris\nSteps: 4, Sampler: Euler a, CFG scale: 1, Seed: 7, Size: 64x64/);
    // The same request over HTTP + SSE gives the same image (CPU generation is deterministic).
    const httpPreviews = [];
    const [again] = await lb.generate(request, { transport: "http", onPreview: (d) => httpPreviews.push(d) });
    assert.deepEqual(again, png);
    assert.ok(httpPreviews.length >= 1);
    await lb.close();
  });

  test("a batch: one result per image, each with its own seed", async () => {
    const lb = client();
    const job = await lb.submit(tinyRequest({ batch_size: 2, seed: 100 }));
    const images = await job.wait();
    assert.equal(images.length, 2);
    assert.deepEqual([...job.resultEvents.values()].map((r) => r.seed).sort(), [100, 101]);
    await lb.close();
  });

  test("inpaint with the vectors' uploads; the stored inputs come back over HTTP", async () => {
    const lb = client();
    const submit = vectorJson("client/submit_inpaint.json");
    const init = decodeBinaryFrame(vector("binary/upload_init.bin")).payload;
    const mask = decodeBinaryFrame(vector("binary/upload_mask.bin")).payload;
    const job = await lb.submit({ ...submit.request, guidance: 1.0 }, { initImage: init, mask });
    const [png] = await job.wait();
    assert.equal(sniffFormat(png), "png");
    assert.equal(sniffFormat(await lb.input(job.jobId, "init")), "png");
    assert.equal(sniffFormat(await lb.input(job.jobId, "mask")), "png");
    await assert.rejects(lb.input(job.jobId, "depth"), (e) => e.code === "unknown_job" && e.field === "role");
    await lb.close();
  });

  test("cancel a running job: it ends with cancelled", async () => {
    const lb = client();
    const job = await lb.submit(longRequest());
    for await (const item of job) {
      if (!isImageFrame(item) && item.type === "progress") {
        await job.cancel();
        break;
      }
    }
    await assert.rejects(job.wait(), (e) => e.code === "cancelled");
    assert.equal(job.state, "cancelled");
    assert.equal((await lb.status(job.jobId)).state, "cancelled");
    await lb.close();
  });

  test("generate with an AbortSignal cancels on the server", async () => {
    const lb = client();
    const controller = new AbortController();
    const running = lb.generate(longRequest(), { signal: controller.signal, onProgress: () => controller.abort() });
    await assert.rejects(running, (e) => e.code === "cancelled");
    await lb.close();
  });

  test("attach from another connection: status first, then the results again", async () => {
    const first = client();
    const job = await first.submit(tinyRequest({ seed: 11 }));
    const [png] = await job.wait();
    await first.close();
    const second = client();
    const attached = await second.attach(job.jobId);
    const items = [];
    for await (const item of attached) items.push(isImageFrame(item) ? `frame:${item.kind}` : item.type);
    assert.deepEqual(items, ["status", "result", "frame:result", "done"]);
    assert.deepEqual(attached.images(), [png]);
    await assert.rejects(second.attach("0".repeat(32)), (e) => e.code === "unknown_job");
    await second.close();
  });

  test("reconnect: a dropped socket is reopened and the running job re-attached", async () => {
    const { sockets, TrackedWebSocket } = trackedWebSockets();
    const lb = client({ WebSocket: TrackedWebSocket, reconnect: true, reconnectDelaysMs: [50] });
    const connection = await lb.connect();
    const reconnected = new Promise((resolve) => connection.on("reconnected", resolve));
    const job = await lb.submit(tinyRequest({ steps: 40, width: 128, height: 128 }));
    await new Promise((resolve) => job.on((item) => !isImageFrame(item) && item.type === "progress" && resolve()));
    sockets[0].terminate(); // the network drops: no close handshake
    await reconnected;
    const images = await job.wait();
    assert.equal(images.length, 1);
    assert.equal(sockets.length, 2);
    await lb.close();
  });

  test("without reconnect, a dropped socket fails the job with ConnectionLost; attach picks it up", async () => {
    const { sockets, TrackedWebSocket } = trackedWebSockets();
    const lb = client({ WebSocket: TrackedWebSocket });
    const job = await lb.submit(tinyRequest({ steps: 100, width: 256, height: 256 })); // still running at the drop
    sockets[0].terminate();
    await assert.rejects(job.wait(), (e) => e instanceof ConnectionLost);
    const again = await lb.attach(job.jobId); // the client opens a new connection for it
    assert.equal((await again.wait()).length, 1);
    assert.equal(sockets.length, 2);
    await lb.close();
  });

  test("concurrent calls share one connection", async () => {
    const lb = client();
    const [a, b, c] = await Promise.all([lb.connect(), lb.connect(), lb.connect()]);
    assert.ok(a === b && b === c);
    await lb.close();
  });

  test("the client vectors drive the real server; the invalid ones get their errors", async () => {
    const lb = client();
    const connection = await lb.connect();
    const errors = [];
    connection.on("error", (e) => errors.push(e));
    const index = vectorJson("invalid/index.json");
    const textVectors = Object.keys(index).filter((n) => !n.endsWith(".bin"));
    for (const name of textVectors) connection.send(new TextDecoder().decode(vector(`invalid/${name}`)));
    for (const name of Object.keys(index).filter((n) => n.endsWith(".bin"))) connection.sendBytes(vector(`invalid/${name}`));
    assert.ok((await connection.ping()) >= 0); // every error above has arrived before the pong
    assert.deepEqual(errors.map((e) => e.code), [...textVectors, ...Object.keys(index).filter((n) => n.endsWith(".bin"))]
      .map((n) => index[n].code));
    for (const [i, name] of textVectors.entries()) {
      if ("field" in index[name]) assert.equal(errors[i].field, index[name].field, name);
    }
    // The valid client vectors: ping → pong, submit → accepted (its job runs to the end).
    assert.ok(vectorNames("client", ".json").includes("submit_txt2img.json"));
    const submit = vectorJson("client/submit_txt2img.json");
    const job = await connection.submit({ ...submit.request, steps: 2, width: 64, height: 64 }, { clientRef: submit.client_ref });
    assert.equal((await job.wait()).length, submit.request.batch_size ?? 1);
    await lb.close();
  });
});

describe("a server with a token", () => {
  test("no token: the websocket and REST refuse with unauthorized", async () => {
    const lb = new LatentBridge(guarded.url);
    await assert.rejects(lb.connect(), (e) => e.code === "unauthorized");
    await assert.rejects(lb.health(), (e) => e.code === "unauthorized" && e.status === 401);
    const wrong = new LatentBridge(guarded.url, { token: "wrong" });
    await assert.rejects(wrong.connect(), (e) => e.code === "unauthorized");
  });

  test("with the token: REST and websocket work, and the token never appears in a URL", async () => {
    const urls = [];
    const spyFetch = (url, init) => {
      urls.push(String(url));
      return fetch(url, init);
    };
    const lb = new LatentBridge(guarded.url, { token: TOKEN, fetch: spyFetch });
    assert.equal((await lb.health()).status, "ok");
    const [png] = await lb.generate(tinyRequest());
    assert.equal(sniffFormat(png), "png");
    const [viaHttp] = await lb.generate(tinyRequest(), { transport: "http" });
    assert.deepEqual(viaHttp, png);
    assert.ok(!lb.wsUrl.includes(TOKEN));
    assert.ok(urls.length > 0 && urls.every((u) => !u.includes(TOKEN)));
    assert.ok(!guarded.output().includes(TOKEN), "the server log does not show the token");
    await lb.close();
  });
});
