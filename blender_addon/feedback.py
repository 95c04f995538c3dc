"""What the artist sees outside the panel: progress in the status bar and in the 3D Viewport /
Image Editor headers while a job runs, the connection state with the action that fixes it, and
long messages wrapped so they can be read in full."""

from __future__ import annotations

import textwrap
from typing import Any

import bpy

from . import animation, texture_project, wire
from .connection import CONNECTED, CONNECTING, INCOMPATIBLE, RETRYING, UNAUTHORIZED
from .controller import controller, preferences

ICONS = {  # one icon per action, used by panels, menus and headers alike
    "generate": "RENDER_STILL",
    "texture": "TEXTURE",
    "project": "MOD_UVPROJECT",
    "animate": "RENDER_ANIMATION",
    "resume": "PLAY",
    "cancel": "CANCEL",
    "regenerate": "FILE_REFRESH",
    "use_result": "CHECKMARK",
    "random_seed": "MOD_NOISE",
    "random_toggle": "ORIENTATION_GIMBAL",
    "reuse_seed": "RECOVER_LAST",
    "connect": "LINKED",
    "disconnect": "UNLINKED",
    "refresh": "VIEWZOOM",
    "start_backend": "CONSOLE",
    "stop_backend": "QUIT",
    "error": "ERROR",
    "history": "TIME",
    "presets": "PRESET",
    "lora_add": "ADD",
    "lora_remove": "REMOVE",
}


def wrap(text: str, width_px: float, char_px: float = 7.0) -> list[str]:
    """Lines of `text` that fit a region `width_px` wide (labels do not wrap by themselves)."""
    columns = max(20, int(width_px / char_px))
    return textwrap.wrap(text, columns) or [""]


def progress_text(settings: Any) -> str:
    """The running job's progress; while the connection is down, what it waits for instead of
    a frozen step and ETA."""
    line = connection_line()
    if settings.running and controller.conn_state != CONNECTED and controller.connection is not None:
        return line[0]
    frame = animation.frame_text(settings.id_data.name) or texture_project.view_text(settings.id_data.name)
    if settings.running and settings.total:
        eta = f", ETA {settings.eta:.0f} s" if settings.eta >= 0 else ""
        step = f"Step {settings.step}/{settings.total}{eta}"
        return f"{frame}, {step}" if frame else step
    return f"{frame}: {settings.status}" if frame and settings.status else settings.status


def connection_line() -> tuple[str, str, str]:
    """(text, icon, fixing action) for the connection: connected / reconnecting in N s / no
    backend / refused, with the operator that fixes it ("" when nothing is needed)."""
    state, status = controller.conn_state, controller.conn_status
    conn = controller.connection
    if conn is None:
        return "Not connected", "UNLINKED", "latentbridge.connect"
    if state == CONNECTED:
        return status, "CHECKMARK", ""
    if state == CONNECTING:
        return "Connecting…", "SORTTIME", ""
    if state == RETRYING:
        wait = conn.retry_in()
        when = f"reconnecting in {wait:.0f} s" if wait and wait >= 0.5 else "reconnecting…"
        prefs = preferences()
        local = prefs is not None and wire.is_loopback(prefs.server_url) and not controller.backend.running
        return f"{status}; {when}", "ERROR", "latentbridge.start_backend" if local else "latentbridge.connect"
    if state == UNAUTHORIZED:
        return status, "LOCKED", "preferences.addon_show"
    if state == INCOMPATIBLE:
        return status, "ERROR", ""
    return status, "INFO", "latentbridge.connect"


def draw_connection(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    text, icon, action = connection_line()
    col = layout.column(align=True)
    for i, line in enumerate(wrap(text, context.region.width if context.region else 300)):
        col.label(text=line, icon=icon if i == 0 else "BLANK1")
    if action == "latentbridge.start_backend":
        row = col.row(align=True)
        row.operator("latentbridge.connect", text="Retry Now", icon=ICONS["connect"])
        row.operator(action, icon=ICONS["start_backend"])
        col.label(text="or run `latentbridge serve` in a terminal")
    elif action == "preferences.addon_show":
        col.operator(action, text="Open Preferences", icon="PREFERENCES").module = __package__ or "latentbridge"
    elif action:
        col.operator(action, text="Retry Now" if controller.connection else "Connect", icon=ICONS["connect"])


def _running_settings(context: bpy.types.Context) -> Any:
    scene = getattr(context, "scene", None)
    settings = getattr(scene, "latentbridge", None)
    return settings if settings is not None and settings.running else None


def draw_status_bar(self: Any, context: bpy.types.Context) -> None:
    """Status bar: a progress bar with the step (or frame) while a job runs, and a Cancel."""
    settings = _running_settings(context)
    if settings is None:
        return
    row = self.layout.row(align=True)
    text = f"Latent Bridge: {progress_text(settings)}"
    if hasattr(row, "progress"):
        row.progress(factor=settings.progress, type="BAR", text=text)
    else:
        row.label(text=text)
    row.operator("latentbridge.cancel", text="", icon=ICONS["cancel"])


def draw_header(self: Any, context: bpy.types.Context) -> None:
    """3D Viewport / Image Editor header: the step while a job runs (Esc or ✕ cancels)."""
    settings = _running_settings(context)
    if settings is None:
        return
    row = self.layout.row(align=True)
    row.label(text=progress_text(settings), icon="SORTTIME")
    row.operator("latentbridge.cancel", text="", icon=ICONS["cancel"])


def register() -> None:
    bpy.types.STATUSBAR_HT_header.prepend(draw_status_bar)
    bpy.types.VIEW3D_HT_header.append(draw_header)
    bpy.types.IMAGE_HT_header.append(draw_header)


def unregister() -> None:
    bpy.types.STATUSBAR_HT_header.remove(draw_status_bar)
    bpy.types.VIEW3D_HT_header.remove(draw_header)
    bpy.types.IMAGE_HT_header.remove(draw_header)
