"""Add-on preferences: where the server is, its token, and an optional local backend."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, StringProperty

from . import feedback, wire
from .controller import ADDON_ID, controller, online_refusal


class LATENTBRIDGE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    server_url: StringProperty(
        name="Server URL",
        default="http://127.0.0.1:7423",
        description="Address of `latentbridge serve` (http://host:port or ws://host:port)",
    )
    token: StringProperty(
        name="Token",
        subtype="PASSWORD",
        description="Bearer token; needed when the server listens beyond this computer",
    )
    start_local: BoolProperty(
        name="Start Local Backend",
        default=False,
        description="Start a backend on this computer when the add-on connects and nothing answers at the Server URL",
    )
    backend_command: StringProperty(
        name="Command",
        default="",
        description="Command that starts the backend (empty: `<Python> -m latentbridge serve`)",
    )
    python_path: StringProperty(
        name="Python",
        subtype="FILE_PATH",
        default="",
        description="Python that has the `latentbridge` package installed (used when Command is empty)",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        col = layout.column()
        col.prop(self, "server_url")
        col.prop(self, "token")
        refusal = online_refusal(self.server_url)
        if refusal:
            box = col.box()
            for i, line in enumerate(feedback.wrap(refusal, 700)):
                box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
        elif not wire.is_loopback(self.server_url) and not self.token:
            col.label(text="A server beyond this computer needs its token", icon="INFO")
        row = col.row(align=True)
        row.operator("latentbridge.connect", icon=feedback.ICONS["connect"])
        row.operator("latentbridge.disconnect", icon=feedback.ICONS["disconnect"])
        box = col.box()
        feedback.draw_connection(box, context)
        if controller.conn_state in ("RETRYING", "IDLE", "CLOSED"):
            box.label(text="Nothing reachable? Run `latentbridge serve` in a terminal (see the README),")
            box.label(text="or tick Start Local Backend below and give the Python that has it installed.")
        col.separator()
        col.prop(self, "start_local")
        sub = col.column()
        sub.active = self.start_local
        sub.prop(self, "backend_command")
        sub.prop(self, "python_path")
        row = sub.row(align=True)
        row.operator("latentbridge.start_backend", icon=feedback.ICONS["start_backend"])
        row.operator("latentbridge.stop_backend", icon=feedback.ICONS["stop_backend"])
        sub.label(text=f"Local backend: {controller.backend.status()}")
        for line in controller.backend.output()[-3:]:
            sub.label(text=line)


classes = (LATENTBRIDGE_AP_preferences,)
