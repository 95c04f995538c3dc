"""Add-on preferences: where the server is, its token, and an optional local backend."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, StringProperty

from .controller import ADDON_ID, controller


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
        row = col.row(align=True)
        row.operator("latentbridge.connect", icon="LINKED")
        row.operator("latentbridge.disconnect", icon="UNLINKED")
        box = col.box()
        box.label(text=f"Connection: {controller.conn_status}", icon=_state_icon(controller.conn_state))
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
        row.operator("latentbridge.start_backend", icon="PLAY")
        row.operator("latentbridge.stop_backend", icon="PAUSE")
        sub.label(text=f"Local backend: {controller.backend.status()}")
        for line in controller.backend.output()[-3:]:
            sub.label(text=line)


def _state_icon(state: str) -> str:
    return {"CONNECTED": "CHECKMARK", "UNAUTHORIZED": "LOCKED", "RETRYING": "ERROR", "CONNECTING": "SORTTIME"}.get(state, "INFO")


classes = (LATENTBRIDGE_AP_preferences,)
