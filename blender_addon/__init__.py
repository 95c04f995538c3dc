"""Latent Bridge for Blender: Stable Diffusion from renders, masks and seamless textures, with
live previews, batches and animations, talking to a local `latentbridge serve` backend over a
websocket."""

from __future__ import annotations

import bpy

from . import capture, feedback, live, menus, operators, ops_server, panels, preferences, properties, session
from .controller import controller, timer

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(
    properties.classes + preferences.classes + operators.classes + ops_server.classes + menus.classes + panels.classes
    + live.classes
)


def register() -> None:
    _register_classes()
    properties.register()
    live.register()
    session.register()
    menus.register()
    feedback.register()
    if capture.note_changes not in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.append(capture.note_changes)
    if not bpy.app.timers.is_registered(timer):
        bpy.app.timers.register(timer, first_interval=0.5, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(timer):
        bpy.app.timers.unregister(timer)
    if capture.note_changes in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.remove(capture.note_changes)
    live.unregister()
    controller.shutdown()
    feedback.unregister()
    menus.unregister()
    session.unregister()
    properties.unregister()
    _unregister_classes()
