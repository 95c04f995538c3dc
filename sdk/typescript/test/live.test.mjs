// Live sessions through the SDK against the real server (tiny model): frames and results, latest
// wins before the network, settings changed without a restart, typed errors, raw RGB, a drop.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { WebSocket as NodeWebSocket } from "ws";
import { ConnectionLost, decodeBinaryFrame, LatentBridge, LatentBridgeError, sniffFormat } from "../dist/index.js";
import { startServer, vector } from "./helpers.mjs";

let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

const SIZE = 64;
const liveRequest = (overrides = {}) => ({
  mode: "img2img", prompt: "bronze", width: SIZE, height: SIZE, strength: 0.5, seed: 5, ...overrides,
});
/** A real PNG to send as a frame (the vectors' init upload). */
const initPng = () => decodeBinaryFrame(vector("binary/upload_init.bin")).payload;
const rgbFrame = (value) => new Uint8Array(SIZE * SIZE * 3).fill(value);

function client(options = {}) {
  return new LatentBridge(server.url, { clientName: "sdk-live-tests", ...options });
}

describe("live sessions", () => {
  test("a frame comes back as a result; an update renders the last frame again; stop reports the counts", async () => {
    const lb = client();
    const session = await lb.liveStart(liveRequest(), { format: "rgb" });
    assert.equal(session.request.sampler, "euler"); // the turbo preset, applied by the server
    assert.equal(session.request.seed, 5);
    const number = await session.sendFrame({ init: initPng() });
    const first = await session.nextResult(30_000);
    assert.deepEqual([first.frame, first.revision, first.width, first.height, first.format], [number, 0, SIZE, SIZE, "rgb"]);
    assert.equal(first.data.length, SIZE * SIZE * 3);
    assert.ok(first.timings && first.timings.denoise !== undefined);
    assert.equal(session.latest, first);
    const updated = await session.update({ request: liveRequest({ prompt: "weathered verdigris" }) });
    assert.equal(updated.revision, 1);
    assert.equal(session.request.prompt, "weathered verdigris");
    const again = await session.nextResult(30_000); // nothing new sent: the last frame, with the new prompt
    assert.deepEqual([again.frame, again.revision], [number, 1]);
    assert.notDeepEqual(again.data, first.data);
    const stopped = await session.stop();
    assert.equal(stopped.reason, "stopped");
    assert.deepEqual(stopped.frames, { received: 1, rendered: 2, dropped: 0, stale_rendered: 0, failed: 0 });
    assert.equal(await session.stop(), stopped); // stopping twice is harmless
    await assert.rejects(session.sendFrame({ init: initPng() }), (e) => e.code === "unknown_job");
    await assert.rejects(session.nextResult(1000), (e) => e instanceof LatentBridgeError);
    await lb.close();
  });

  test("latest wins before the network: a burst sends the first frame and then only the newest", async () => {
    const lb = client();
    const session = await lb.liveStart(liveRequest(), { format: "rgb" });
    // No socket event runs between these awaits: every frame after the first finds it in flight.
    for (let i = 0; i < 20; i++) await session.sendFrame({ init: rgbFrame(i * 10), size: { width: SIZE, height: SIZE } });
    assert.deepEqual([session.sent, session.dropped], [1, 18]);
    const results = [await session.nextResult(30_000), await session.nextResult(30_000)];
    assert.deepEqual(results.map((r) => r.frame), [0, 19]);
    assert.equal(session.sent, 2);
    const stopped = await session.stop();
    assert.deepEqual(stopped.frames, { received: 2, rendered: 2, dropped: 0, stale_rendered: 0, failed: 0 });
    await lb.close();
  });

  test("errors are typed; a refused frame is answered and the session carries on", async () => {
    const lb = client();
    await assert.rejects(lb.liveStart(liveRequest({ mode: "inpaint" })),
      (e) => e.code === "unsupported" && e.field === "request.mode");
    const controlled = liveRequest({ mode: "txt2img", controls: [{ type: "depth", model: "tiny-controlnet" }] });
    const session = await lb.liveStart(controlled, { format: "png" });
    await assert.rejects(session.sendFrame({ init: new Uint8Array([1, 2, 3]) }), (e) => e.code === "bad_image");
    await assert.rejects(session.sendFrame({}), (e) => e.code === "bad_image" && e.field === "init");
    await session.sendFrame({ init: initPng() }); // an init part this session does not take
    for (let i = 0; i < 200 && session.errors.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(session.errors.map((e) => [e.code, e.field, e.jobId]), [["missing_image", "header.parts", session.jobId]]);
    const number = await session.sendFrame({ controls: [initPng()] }); // sent at once: the refusal answered the last
    const result = await session.nextResult(30_000);
    assert.equal(result.frame, number);
    assert.equal(sniffFormat(result.data), "png");
    await assert.rejects(session.update({ request: { ...controlled, width: 4096, height: 4096 } }), (e) => e.code === "too_large");
    assert.ok(session.running);
    assert.equal(session.revision, 0); // the old settings stay
    const stopped = await session.stop();
    assert.deepEqual(stopped.frames, { received: 1, rendered: 1, dropped: 0, stale_rendered: 0, failed: 0 });
    await lb.close();
  });

  test("raw RGB frames; a size that does not match is refused before sending", async () => {
    const lb = client();
    const session = await lb.liveStart(liveRequest(), { format: "jpeg" });
    await assert.rejects(session.sendFrame({ init: rgbFrame(1).subarray(3), size: { width: SIZE, height: SIZE } }),
      (e) => e.code === "bad_image" && e.field === "init");
    const number = await session.sendFrame({ init: rgbFrame(120), size: { width: SIZE, height: SIZE } });
    const results = [];
    for await (const result of session) {
      results.push(result);
      if (results.length === 1) await session.stop(); // the iteration ends with the session
    }
    assert.deepEqual(results.map((r) => [r.frame, r.format, sniffFormat(r.data)]), [[number, "jpeg", "jpeg"]]);
    await lb.close();
  });

  test("a dropped connection ends the session with ConnectionLost; a new one starts on a new link", async () => {
    const sockets = [];
    class TrackedWebSocket extends NodeWebSocket {
      constructor(url) {
        super(url);
        sockets.push(this);
      }
    }
    const lb = client({ WebSocket: TrackedWebSocket });
    const session = await lb.liveStart(liveRequest(), { format: "rgb" });
    await session.sendFrame({ init: initPng() });
    await session.nextResult(30_000);
    sockets[0].terminate();
    await assert.rejects(session.nextResult(30_000), (e) => e instanceof ConnectionLost);
    await assert.rejects(session.sendFrame({ init: initPng() }), (e) => e instanceof ConnectionLost);
    const again = await lb.liveStart(liveRequest(), { format: "rgb" });
    await again.sendFrame({ init: initPng() });
    assert.equal((await again.nextResult(30_000)).frame, 0);
    assert.equal(sockets.length, 2);
    await lb.close();
  });
});
