"""Latent Bridge for Blender: Stable Diffusion from renders, masks and seamless textures, with
live previews, batches and animations, talking to a local `latentbridge serve` backend over a
websocket."""

from __future__ import annotations

import atexit

import bpy

from . import (capture, control_ui, feedback, live, menus, operators, ops_server, panels, preferences, properties, session,
               texture_ui)
from .controller import controller, timer
from .worker import worker

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(
    control_ui.classes + texture_ui.classes + properties.classes + preferences.classes + operators.classes
    + ops_server.classes + menus.classes + panels.classes + live.classes
)


def _at_exit() -> None:
    """Python is exiting (Blender quits) without unregistering the add-on: end the worker thread
    first, as a thread alive during the teardown can crash the process (seen on Blender 4.2)."""
    worker.stop(join_s=2.0)


def register() -> None:
    _register_classes()
    atexit.unregister(_at_exit)  # once, however often the add-on is enabled
    atexit.register(_at_exit)
    properties.register()
    control_ui.register()
    texture_ui.register()
    live.register()
    session.register()
    menus.register()
    feedback.register()
    if capture.note_changes not in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.append(capture.note_changes)
    if not bpy.app.timers.is_registered(timer):
        bpy.app.timers.register(timer, first_interval=0.5, persistent=True)


def unregister() -> None:
    atexit.unregister(_at_exit)
    if bpy.app.timers.is_registered(timer):
        bpy.app.timers.unregister(timer)
    if capture.note_changes in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.remove(capture.note_changes)
    live.unregister()
    controller.shutdown()
    worker.stop()
    feedback.unregister()
    menus.unregister()
    session.unregister()
    texture_ui.unregister()
    control_ui.unregister()
    properties.unregister()
    _unregister_classes()
