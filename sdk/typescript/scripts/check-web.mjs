// Checks that backend/latentbridge/web/sdk/ (the SDK as plain ES modules, shipped inside the
// Python package for the web page) is exactly what `npm run build:web` makes from src/.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL("..", import.meta.url));
const shipped = join(here, "../../backend/latentbridge/web/sdk");

function files(root) {
  const out = new Map();
  const walk = (dir) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else out.set(relative(root, path), readFileSync(path, "utf8"));
    }
  };
  walk(root);
  return out;
}

const fresh = mkdtempSync(join(tmpdir(), "latentbridge-web-sdk-"));
try {
  execFileSync(process.execPath, [join(here, "node_modules/typescript/bin/tsc"), "-p", join(here, "tsconfig.web.json"), "--outDir", fresh],
    { stdio: "inherit" });
  const want = files(fresh);
  const have = files(shipped);
  const stale = [...new Set([...want.keys(), ...have.keys()])].filter((name) => want.get(name) !== have.get(name));
  if (stale.length) {
    console.error(`backend/latentbridge/web/sdk is stale (${stale.join(", ")}): run \`npm run build:web\` in sdk/typescript and commit the result`);
    process.exit(1);
  }
  console.log("backend/latentbridge/web/sdk is fresh");
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
