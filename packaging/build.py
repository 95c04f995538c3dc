"""Build the Blender extension zip: `python packaging/build.py` → `dist/latentbridge-<version>.zip`.

1. Fetch the pinned `websockets` wheel (pure Python, so one zip serves every platform) into
   `blender_addon/wheels/` (git-ignored), unless it is already there.
2. Make sure the manifest's `wheels` lists exactly that wheel.
3. Validate the source, build the zip and validate the zip with Blender's own extension tool,
   which ships inside the `bpy` package (`bpy/<ver>/scripts/addons_core/bl_pkg/cli/blender_ext.py`),
   or a path given with --blender-ext. The tool of the Python running this script is used: run it
   with the newest Blender line's Python to validate against that line (CI does).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon"
MANIFEST = ADDON / "blender_manifest.toml"
WHEELS = ADDON / "wheels"
# The sync client API (`websockets.sync.client.connect`, `recv(timeout=)`) the add-on uses.
WEBSOCKETS_VERSION = "17.4"
WHEEL_NAME = f"websockets-{WEBSOCKETS_VERSION}-py3-none-any.whl"


class BuildError(Exception):
    pass


def find_blender_ext() -> Path:
    """blender_ext.py inside the installed `bpy` package (found without importing bpy)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("`bpy` is not installed: pip install bpy, or pass --blender-ext PATH")
    base = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(base.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise BuildError(f"no blender_ext.py under {base}")
    return found[-1]


def fetch_wheel() -> Path:
    wheel = WHEELS / WHEEL_NAME
    if wheel.is_file():
        return wheel
    WHEELS.mkdir(exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", f"websockets=={WEBSOCKETS_VERSION}",
        "--only-binary=:all:", "--no-deps", "--platform", "any", "--implementation", "py",
        "--python-version", "3.11", "--dest", str(WHEELS), "--quiet",
    ]
    run(cmd)
    if not wheel.is_file():
        raise BuildError(f"pip did not produce {WHEEL_NAME} (is there a py3-none-any wheel for websockets {WEBSOCKETS_VERSION}?)")
    return wheel


def sync_manifest_wheels() -> None:
    """The manifest must list exactly the bundled wheel; rewrite its `wheels` line if it does not."""
    text = MANIFEST.read_text()
    wanted = f'wheels = ["./wheels/{WHEEL_NAME}"]'
    if tomllib.loads(text).get("wheels") == [f"./wheels/{WHEEL_NAME}"]:
        return
    new, n = re.subn(r"(?m)^wheels\s*=.*$", wanted, text)
    if n != 1:
        raise BuildError("blender_manifest.toml needs one `wheels = [...]` line")
    MANIFEST.write_text(new)
    print(f"updated {MANIFEST.relative_to(ROOT)}: {wanted}")


def stale_wheels() -> list[Path]:
    return [p for p in WHEELS.glob("*.whl") if p.name != WHEEL_NAME]


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def build(output_dir: Path, blender_ext: Path | None = None) -> Path:
    fetch_wheel()
    for old in stale_wheels():
        old.unlink()  # an unlisted wheel in the folder would be zipped too
    sync_manifest_wheels()
    tool = blender_ext or find_blender_ext()
    version = tomllib.loads(MANIFEST.read_text())["version"]
    run([sys.executable, str(tool), "validate", str(ADDON)])
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / f"latentbridge-{version}.zip"
    out.unlink(missing_ok=True)
    run([sys.executable, str(tool), "build", "--source-dir", str(ADDON), "--output-filepath", str(out)])
    if not out.is_file():
        raise BuildError(f"the extension tool did not write {out}")
    run([sys.executable, str(tool), "validate", str(out)])  # the archive as Blender will read it
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--blender-ext", type=Path, help="blender_ext.py to use instead of the one in bpy")
    args = parser.parse_args(argv)
    try:
        out = build(args.output_dir, args.blender_ext)
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
