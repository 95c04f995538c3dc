"""Add-on tests against the real Blender (`bpy`), with the built extension installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lb_blender  # noqa: E402

lb_blender.import_bpy_or_fail()


@pytest.fixture(scope="session")
def addon():
    lb_blender.bpy_or_skip()
    return lb_blender.install_addon()


@pytest.fixture
def scene(addon):
    """A fresh file (add-on still enabled) with a cube and a camera, 64×64 Workbench."""
    addon["controller"].controller.reset()
    lb_blender.reset_prefs()
    return lb_blender.reset_scene()


@pytest.fixture(autouse=True)
def no_deprecated_blender_api():
    """Every add-on test doubles as a check that the add-on uses no API this Blender deprecates."""
    with lb_blender.no_deprecated_api():
        yield


@pytest.fixture
def fake(addon, scene):
    """A stand-in network thread on the controller: tests feed what 'arrived'."""
    conn = lb_blender.FakeConnection(addon["connection"])
    addon["controller"].controller.connection = conn
    return conn


def pytest_configure(config):
    lb_blender.register_smoke_marker(config)
