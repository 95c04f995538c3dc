"""Latent Bridge for Blender: Stable Diffusion from renders, masks and seamless textures, with
live previews, talking to a local `latentbridge serve` backend over a websocket."""

from __future__ import annotations

import bpy

from . import operators, panels, preferences, properties
from .controller import controller, timer

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(
    properties.classes + preferences.classes + operators.classes + panels.classes
)


def register() -> None:
    _register_classes()
    properties.register()
    if not bpy.app.timers.is_registered(timer):
        bpy.app.timers.register(timer, first_interval=0.5, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(timer):
        bpy.app.timers.unregister(timer)
    controller.shutdown()
    properties.unregister()
    _unregister_classes()
