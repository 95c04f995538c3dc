// The shared wire-format vectors (tests/vectors/), read as the Python side reads them.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { decodeBinaryFrame, encodeBinaryFrame, Job, LatentBridgeError, sniffFormat } from "../dist/index.js";
import { vector, vectorJson, vectorNames } from "./helpers.mjs";

describe("binary vectors", () => {
  for (const name of vectorNames("binary", ".bin")) {
    test(`${name} decodes and re-encodes to the same bytes`, () => {
      const frame = vector(`binary/${name}`);
      const expected = vectorJson(`binary/${name.replace(/\.bin$/, ".header.json")}`);
      const { header, payload } = decodeBinaryFrame(frame);
      assert.deepEqual(header, expected);
      assert.deepEqual(encodeBinaryFrame(expected, payload), frame);
      if (header.format === "rgb") {
        assert.equal(payload.length, header.width * header.height * 3);
        assert.deepEqual([...payload.subarray(0, 3)], [255, 0, 0]); // rows top first: red at (0, 0)
      } else {
        assert.equal(sniffFormat(payload), header.format);
      }
    });
  }

  test("an ArrayBuffer frame (what a browser WebSocket gives) decodes the same", () => {
    const frame = vector("binary/preview.bin");
    const copy = frame.slice().buffer;
    assert.deepEqual(decodeBinaryFrame(copy).header, decodeBinaryFrame(frame).header);
  });
});

describe("invalid vectors", () => {
  const index = vectorJson("invalid/index.json");
  for (const name of Object.keys(index).filter((n) => n.endsWith(".bin"))) {
    test(`${name} is refused with ${index[name].code}`, () => {
      assert.throws(() => decodeBinaryFrame(vector(`invalid/${name}`)), (error) => {
        assert.ok(error instanceof LatentBridgeError);
        assert.equal(error.code, index[name].code);
        if ("field" in index[name]) assert.equal(error.field, index[name].field);
        return true;
      });
    });
  }
});

describe("server vectors", () => {
  test("there is one vector for every server event type", () => {
    const types = new Set(vectorNames("server", ".json").map((n) => vectorJson(`server/${n}`).type));
    assert.deepEqual([...types].sort(), ["accepted", "cancelled", "done", "error", "hello", "live_started",
      "live_stopped", "live_updated", "model", "pong", "preview", "progress", "result", "started", "status"]);
  });

  test("a job follows accepted → started → progress → result → done", async () => {
    const job = new Job(vectorJson("server/accepted.json").job_id, async () => undefined);
    const seen = [];
    job.on((item) => seen.push(item.type ?? item.kind));
    for (const name of ["accepted", "started", "progress", "result"]) job.deliver(vectorJson(`server/${name}.json`));
    const result = vectorJson("server/result.json");
    const frame = decodeBinaryFrame(vector("binary/result.bin"));
    job.deliver({ kind: "result", header: frame.header, data: frame.payload });
    assert.equal(job.state, "running");
    assert.equal(job.seed, vectorJson("server/started.json").seed);
    job.deliver(vectorJson("server/done.json"));
    assert.deepEqual(seen, ["accepted", "started", "progress", "result", "result", "done"]);
    assert.equal(job.state, "done");
    assert.deepEqual(job.resultEvents.get(result.index).request, result.request);
    const images = await job.wait();
    assert.equal(images.length, 1);
    assert.equal(sniffFormat(images[0]), "png");
  });

  test("a job that ends in error rejects with the server's code and field", async () => {
    const event = vectorJson("server/error_job.json");
    const job = new Job(event.job_id, async () => undefined);
    job.deliver(event);
    await assert.rejects(job.wait(), (error) => error.code === event.code && error.field === event.field);
    assert.equal(job.state, "failed");
  });

  test("a cancelled job rejects with code cancelled; iteration ends after the final event", async () => {
    const event = vectorJson("server/cancelled.json");
    const job = new Job(event.job_id, async () => undefined);
    job.deliver(event);
    await assert.rejects(job.wait(), (error) => error.code === "cancelled");
    const items = [];
    for await (const item of job) items.push(item);
    assert.deepEqual(items, [event]);
  });
});
