"""Shared by the add-on tests (tests/blender) and the end-to-end tests (tests/e2e): real bpy,
the extension built once with packaging/build.py and installed into a throw-away extensions
repository in the (temporary) Blender user folder that tests/conftest.py set up."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[2]
ADDON_SRC = ROOT / "blender_addon"
REPO_MODULE = "lbtest"
ADDON_MODULE = f"bl_ext.{REPO_MODULE}.latentbridge"

_installed: dict[str, Any] = {}


def bpy_required() -> bool:
    return os.environ.get("LATENTBRIDGE_REQUIRE_BPY") == "1"


def import_bpy_or_fail() -> None:
    """In CI (LATENTBRIDGE_REQUIRE_BPY=1) a missing bpy must fail the run, never skip it."""
    if importlib.util.find_spec("bpy") is None and bpy_required():
        raise RuntimeError("LATENTBRIDGE_REQUIRE_BPY=1 but `bpy` is not installed (pip install bpy==5.0.1)")


def bpy_or_skip() -> types.ModuleType:
    """`bpy`; without it a developer's run skips Blender tests, but CI (LATENTBRIDGE_REQUIRE_BPY=1,
    set by .ci/run) fails instead of skipping."""
    import pytest

    import_bpy_or_fail()
    return pytest.importorskip("bpy")


def source_package(name: str = "lbsrc") -> types.ModuleType:
    """The add-on's bpy-free modules (wire, connection, png, backend_process) imported straight
    from the source tree, without running its bpy-importing __init__."""
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(ADDON_SRC)]
        sys.modules[name] = package
    return sys.modules[name]


def source_module(module: str) -> types.ModuleType:
    source_package()
    return importlib.import_module(f"lbsrc.{module}")


def install_addon() -> dict[str, Any]:
    """Build the zip, install it with Blender's extension operator, and check it is enabled."""
    if _installed:
        return _installed
    import addon_utils
    import bpy

    sys.path.insert(0, str(ROOT / "packaging"))
    import build  # packaging/build.py

    out_dir = Path(tempfile.mkdtemp(prefix="latentbridge-dist-"))
    zip_path = build.build(out_dir)
    repo_dir = tempfile.mkdtemp(prefix="latentbridge-repo-")
    prefs = bpy.context.preferences
    prefs.extensions.repos.new(name=REPO_MODULE, module=REPO_MODULE, custom_directory=repo_dir, source="USER")
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo=REPO_MODULE, enable_on_install=True)
    # The operator's return value is not proof: check Blender really has it enabled and loaded.
    loaded_default, loaded_state = addon_utils.check(ADDON_MODULE)
    if ADDON_MODULE not in prefs.addons or not loaded_state:
        raise RuntimeError(f"add-on not enabled after install ({result}, {loaded_default}, {loaded_state})")
    module = importlib.import_module(ADDON_MODULE)
    _installed.update(
        bpy=bpy,
        zip=zip_path,
        repo_dir=Path(repo_dir),
        module=module,
        controller=importlib.import_module(ADDON_MODULE + ".controller"),
        apply=importlib.import_module(ADDON_MODULE + ".apply"),
        capture=importlib.import_module(ADDON_MODULE + ".capture"),
        connection=importlib.import_module(ADDON_MODULE + ".connection"),
        png=importlib.import_module(ADDON_MODULE + ".png"),
        wire=importlib.import_module(ADDON_MODULE + ".wire"),
        **{name: importlib.import_module(f"{ADDON_MODULE}.{name}")
           for name in ("animation", "feedback", "menus", "operators", "properties", "results", "session")},
    )
    return _installed


def is_addon_file(filename: str) -> bool:
    """Whether a file is the add-on's code (its source or the installed copy)."""
    path = Path(filename).resolve()
    installed = _installed.get("repo_dir")
    return ADDON_SRC in path.parents or (installed is not None and Path(installed).resolve() in path.parents)


@contextlib.contextmanager
def no_deprecated_api() -> Iterator[None]:
    """Fails when the add-on's code touched API this Blender deprecates (Blender warns where the
    add-on's line touches it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        yield
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, DeprecationWarning) and is_addon_file(w.filename)]
    assert not ours, ours


def reset_prefs() -> None:
    """The add-on's preferences as installed (an earlier test may have pointed them elsewhere)."""
    import bpy

    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    for name in ("server_url", "token", "start_local", "backend_command", "python_path"):
        prefs.property_unset(name)


def reset_scene(size: int = 64) -> Any:
    """An empty file with a camera looking at a cube, Workbench, `size`² px: fast renders."""
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    mesh = bpy.data.meshes.new("Cube")
    import bmesh

    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=2.0)
    bm.to_mesh(mesh)
    bm.free()
    cube = bpy.data.objects.new("Cube", mesh)
    scene.collection.objects.link(cube)
    cam_data = bpy.data.cameras.new("Camera")
    cam_data.type = "ORTHO"
    cam_data.ortho_scale = 6.0
    camera = bpy.data.objects.new("Camera", cam_data)
    camera.location = (0.0, 0.0, 10.0)
    scene.collection.objects.link(camera)
    scene.camera = camera
    bpy.context.view_layer.objects.active = cube
    for obj in scene.objects:
        obj.select_set(obj is cube)
    return scene


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    """A flat-colour PNG (PIL), as a server's result would be."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def register_smoke_marker(config) -> None:
    config.addinivalue_line("markers", "smoke: the subset run on every Blender line (install, enable, generate, save/reopen)")


class FakeConnection:
    """Stands in for the network thread: the test feeds what 'arrived'."""

    def __init__(self, conn_mod):
        self.items = []
        self.sent = []
        self.state = conn_mod.CONNECTED
        self.status = "Connected (fake)"
        # The address the add-on preferences point at by default, so `connect` reuses this.
        self.url, self.token, self.alive = "ws://127.0.0.1:7423/api/v1/ws", "", True
        self.server_hello = {"type": "hello", "server": "latentbridge/test"}
        self._n = 0

    def retry_in(self):
        return 2.0 if self.state == "RETRYING" else None

    def attach(self, job_id):
        self.sent.append(("attach", job_id))

    def refresh_models(self):
        self.sent.append(("models",))

    def feed(self, item):
        self.items.append(item)

    def poll(self):
        items, self.items = self.items, []
        return items

    def new_ref(self, prefix="lb"):
        self._n += 1
        return f"{prefix}-{self._n}"

    def submit(self, request, images=None, client_ref=None):
        self.sent.append(("submit", request, images, client_ref))
        return client_ref

    def cancel(self, job_id):
        self.sent.append(("cancel", job_id))

    def stop(self):
        self.alive = False


def flush(controller=None, timeout: float = 30.0) -> None:
    """Drain until no job waits for its uploads: those made on the worker thread (PNGs of a
    render, control maps) are sent by the drain step that finds them done."""
    import time

    controller = controller or _installed["controller"].controller
    deadline = time.monotonic() + timeout
    while any(j.state == "preparing" for j in controller.jobs.values()):
        if time.monotonic() > deadline:
            raise AssertionError("uploads still being prepared after %.0f s" % timeout)
        controller.drain()
        time.sleep(0.002)
