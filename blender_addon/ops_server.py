"""Operators around the server and messages: connect, disconnect, lists, the local backend, the
full text of an error, and the internal one that puts network messages into the Info log."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from .backend_process import backend_command, server_answers
from .connection import CONNECTED
from .controller import ConnectRefused, controller, preferences
from .feedback import wrap


class LATENTBRIDGE_OT_connect(bpy.types.Operator):
    """Connect (or reconnect now) to the Latent Bridge server set in the add-on preferences"""

    bl_idname = "latentbridge.connect"
    bl_label = "Connect"

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            conn = controller.connect_from_prefs(context, force=True)
        except ConnectRefused as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Latent Bridge: connecting to {conn.url}")
        return {"FINISHED"}


class LATENTBRIDGE_OT_disconnect(bpy.types.Operator):
    """Close the connection to the server (running jobs go on there and are re-attached on the next connect)"""

    bl_idname = "latentbridge.disconnect"
    bl_label = "Disconnect"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if controller.connection is None:
            cls.poll_message_set("Not connected")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        controller.disconnect()
        self.report({"INFO"}, "Latent Bridge: disconnected")
        return {"FINISHED"}


class LATENTBRIDGE_OT_refresh_models(bpy.types.Operator):
    """List the models and LoRAs the server offers"""

    bl_idname = "latentbridge.refresh_models"
    bl_label = "Refresh Models and LoRAs"

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            conn = controller.connect_from_prefs(context)
        except ConnectRefused as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        conn.refresh_models()
        self.report({"INFO"}, "Latent Bridge: asking the server for its models and LoRAs"
                    if conn.state == CONNECTED else "Latent Bridge: the lists are fetched once connected")
        return {"FINISHED"}


class LATENTBRIDGE_OT_start_backend(bpy.types.Operator):
    """Start a local Latent Bridge backend with the command from the preferences"""

    bl_idname = "latentbridge.start_backend"
    bl_label = "Start Local Backend"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if controller.backend.running:
            cls.poll_message_set("The local backend is already running")
            return False
        return preferences(context) is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = preferences(context)
        if not controller.backend.running and server_answers(prefs.server_url):
            self.report({"INFO"}, f"A server already answers at {prefs.server_url}: connecting to it")
            bpy.ops.latentbridge.connect()
            return {"FINISHED"}
        controller.backend.start(backend_command(prefs.backend_command, prefs.python_path, prefs.server_url))
        status = controller.backend.status()
        if not controller.backend.running:
            self.report({"ERROR"}, status)
            return {"CANCELLED"}
        self.report({"INFO"}, f"Latent Bridge backend: {status}")
        bpy.ops.latentbridge.connect()
        return {"FINISHED"}


class LATENTBRIDGE_OT_stop_backend(bpy.types.Operator):
    """Stop the local backend this add-on started"""

    bl_idname = "latentbridge.stop_backend"
    bl_label = "Stop Local Backend"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not controller.backend.running:
            cls.poll_message_set("No local backend started by the add-on is running")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        controller.backend.stop()
        self.report({"INFO"}, f"Latent Bridge backend: {controller.backend.status()}")
        return {"FINISHED"}


class LATENTBRIDGE_OT_show_error(bpy.types.Operator):
    """Show the whole error message (it can be longer than the panel is wide)"""

    bl_idname = "latentbridge.show_error"
    bl_label = "Show Error"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        scene = getattr(context, "scene", None)
        return scene is not None and bool(scene.latentbridge.error)

    def execute(self, context: bpy.types.Context) -> set[str]:
        text = context.scene.latentbridge.error
        self.report({"ERROR"}, text)  # the Info log keeps it whole too
        if context.window is not None and not bpy.app.background:  # no popups without a screen
            def draw(menu, _context):
                for line in wrap(text, 600):
                    menu.layout.label(text=line)

            context.window_manager.popup_menu(draw, title="Latent Bridge error", icon="ERROR")
        return {"FINISHED"}


class LATENTBRIDGE_OT_clear_error(bpy.types.Operator):
    """Dismiss the error shown in the panel"""

    bl_idname = "latentbridge.clear_error"
    bl_label = "Dismiss Error"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        scene = getattr(context, "scene", None)
        return scene is not None and bool(scene.latentbridge.error)

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.scene.latentbridge.error = ""
        return {"FINISHED"}


class LATENTBRIDGE_OT_report_message(bpy.types.Operator):
    """Put a message from the network side into the Info log"""

    bl_idname = "latentbridge.report_message"
    bl_label = "Latent Bridge Message"
    bl_options = {"INTERNAL"}

    level: EnumProperty(items=[(k, k, f"{k.title()} message") for k in ("INFO", "WARNING", "ERROR")], default="INFO",
                        description="Kind of message")
    message: StringProperty(description="The message")

    def execute(self, context: bpy.types.Context) -> set[str]:
        self.report({self.level}, f"Latent Bridge: {self.message}")
        return {"FINISHED"}


classes = (
    LATENTBRIDGE_OT_connect,
    LATENTBRIDGE_OT_disconnect,
    LATENTBRIDGE_OT_refresh_models,
    LATENTBRIDGE_OT_start_backend,
    LATENTBRIDGE_OT_stop_backend,
    LATENTBRIDGE_OT_show_error,
    LATENTBRIDGE_OT_clear_error,
    LATENTBRIDGE_OT_report_message,
)
