"""End-to-end: the installed add-on in real Blender against a real `latentbridge serve --model tiny`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blender"))
import lb_blender  # noqa: E402

lb_blender.import_bpy_or_fail()
from lb_server import ServerProcess, point_prefs_at, pump  # noqa: E402,F401


@pytest.fixture(scope="session")
def addon():
    lb_blender.bpy_or_skip()
    return lb_blender.install_addon()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lb-server")
    (root / "data").mkdir()
    proc = ServerProcess(root / "data").start()
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def no_deprecated_blender_api():
    with lb_blender.no_deprecated_api():
        yield


def pytest_configure(config):
    lb_blender.register_smoke_marker(config)


@pytest.fixture
def scene(addon):
    addon["controller"].controller.reset()
    lb_blender.reset_prefs()
    return lb_blender.reset_scene()


@pytest.fixture
def connected(addon, scene, server):
    """The add-on connected to the session's server; yields the controller."""
    import bpy

    controller = addon["controller"].controller
    point_prefs_at(server.url, server.token)
    bpy.ops.latentbridge.connect()
    pump(controller, lambda: controller.conn_state == "CONNECTED", 30, "the hello handshake")
    yield controller
    controller.reset()
