// Test helpers: a real `latentbridge serve` on the tiny model, and the shared test vectors.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const VECTORS = fileURLToPath(new URL("../../../tests/vectors/", import.meta.url));

export function vector(path) {
  return new Uint8Array(readFileSync(join(VECTORS, path)));
}

export function vectorJson(path) {
  return JSON.parse(readFileSync(join(VECTORS, path), "utf8"));
}

export function vectorNames(folder, suffix) {
  return readdirSync(join(VECTORS, folder)).filter((n) => n.endsWith(suffix)).sort();
}

/** A small, quick request (guidance 1 skips classifier-free guidance). */
export function tinyRequest(overrides = {}) {
  return { prompt: "bronze", steps: 2, width: 64, height: 64, seed: 7, guidance: 1.0, ...overrides };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

/**
 * Start `python -m latentbridge serve --model tiny` ($LATENTBRIDGE_PYTHON, else python3) on a free
 * port with a fresh data folder; resolves once the model is ready. A port taken by another process
 * before the server binds it gets another try on a new port.
 */
export async function startServer({ token = null, extraArgs = [] } = {}) {
  for (let attempt = 1; ; attempt++) {
    const server = await startOnce(token, extraArgs);
    if (server.ready) return server;
    await server.stop();
    if (attempt === 3) throw new Error(`server did not start:\n${server.output()}`);
  }
}

async function startOnce(token, extraArgs) {
  const python = process.env.LATENTBRIDGE_PYTHON || "python3";
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "latentbridge-ts-"));
  const args = ["-m", "latentbridge", "serve", "--model", "tiny", "--port", String(port), "--data-dir", dataDir,
    "--preview-interval-s", "0", ...(token ? ["--token", token] : []), ...extraArgs];
  const child = spawn(python, args, {
    env: { ...process.env, HF_HUB_OFFLINE: "1", TRANSFORMERS_OFFLINE: "1", TRANSFORMERS_VERBOSITY: "error" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const url = `http://127.0.0.1:${port}`;
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const deadline = Date.now() + 180_000;
  let ready = false;
  while (!ready && child.exitCode === null) {
    if (Date.now() > deadline) throw new Error(`server not ready in time:\n${output}`);
    try {
      const health = await (await fetch(`${url}/api/v1/health`, { headers })).json();
      ready = health.model?.state === "ready";
    } catch {
      // not listening yet
    }
    if (!ready) await new Promise((r) => setTimeout(r, 100));
  }
  ready &&= child.exitCode === null; // ours answered, not another server on a reused port
  return {
    url,
    token,
    ready,
    output: () => output,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
