"""Real add-on, real server: server down, connection dropped mid-job → reconnect + re-attach."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import lb_blender  # noqa: E402 (on the path via conftest)

lb_blender.bpy_or_skip()

from lb_server import SERVER_PYTHON, free_port, point_prefs_at, pump  # noqa: E402


class DroppingProxy:
    """A TCP relay in front of the server whose open connections can be cut, as a network
    failure would, while the server itself keeps running."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.sockets: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.accepted += 1
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop_all(self) -> None:
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sockets.clear()

    def close(self) -> None:
        self.drop_all()
        self.listener.close()


def _quick(scene, steps):
    settings = scene.latentbridge
    settings.mode, settings.steps, settings.random_seed, settings.seed = "txt2img", steps, False, 77
    settings.size_mode, settings.width, settings.height, settings.preview_size = "CUSTOM", 64, 64, 64
    return settings


def test_server_down_is_reported_without_hanging(addon, scene):
    import bpy

    controller = addon["controller"].controller
    point_prefs_at(f"http://127.0.0.1:{free_port()}")
    settings = _quick(scene, 2)
    start = time.monotonic()
    assert bpy.ops.latentbridge.generate() == {"FINISHED"}
    assert time.monotonic() - start < 1.0  # the operator never waits for the network
    pump(controller, lambda: controller.conn_state == "RETRYING", 10, "the unreachable report")
    line, _icon, action = addon["feedback"].connection_line()
    assert "No Latent Bridge server" in line and "reconnecting" in line and action
    assert "No Latent Bridge server" in addon["feedback"].progress_text(settings)
    assert [text for level, text in controller.messages if level == "WARNING" and "No Latent Bridge server" in text]
    assert settings.running  # the job waits for the server, it is not lost
    controller.reset()


@pytest.mark.parametrize("token", ["wrong-token", ""])
def test_wrong_or_missing_token_is_reported(addon, scene, server, token):
    import bpy

    controller = addon["controller"].controller
    point_prefs_at(server.url, token)
    bpy.ops.latentbridge.connect()
    pump(controller, lambda: controller.conn_state == "UNAUTHORIZED", 15, "the token refusal")
    assert "token" in controller.conn_status and "preferences" in controller.conn_status
    assert ("ERROR", controller.conn_status) in controller.messages
    # Fixing the token in the preferences is enough: the next connect uses it.
    point_prefs_at(server.url, server.token)
    bpy.ops.latentbridge.connect()
    pump(controller, lambda: controller.conn_state == "CONNECTED", 15, "the handshake with the right token")
    controller.reset()


def test_dropped_connection_reconnects_and_reattaches(addon, scene, server):
    import bpy

    controller = addon["controller"].controller
    proxy = DroppingProxy(server.port)
    try:
        point_prefs_at(proxy.url, server.token)
        settings = _quick(scene, 12)
        bpy.ops.latentbridge.generate()
        job = list(controller.jobs.values())[-1]
        pump(controller, lambda: job.previews >= 1 or job.finished, 120, "the first preview")
        assert not job.finished, "job finished before the drop; the test needs a slower job"
        proxy.drop_all()
        pump(controller, lambda: controller.conn_state != "CONNECTED", 10, "the drop to be noticed")
        shown = addon["feedback"].progress_text(settings)
        assert "dropped" in shown or "Connect" in shown
        assert bpy.data.images["Latent Bridge Preview"].is_float  # the last preview is kept
        pump(controller, lambda: job.finished, 120, "the re-attached job to finish")
        assert proxy.accepted >= 2  # it reconnected through the proxy
        assert job.state == "done" and len(job.results) == 1, (job.state, job.error)
        image = bpy.data.images[job.results[0]]
        assert image.packed_file is not None and image["latentbridge_seed"] == 77
    finally:
        proxy.close()
        controller.reset()


def test_start_local_backend_from_the_preferences_then_generate(addon, scene, tmp_path):
    """Nothing runs at the Server URL: with *Start Local Backend* the add-on starts one (here:
    this Python's `latentbridge serve --model tiny`), connects, generates, and stops it."""
    import bpy

    controller = addon["controller"].controller
    url = f"http://127.0.0.1:{free_port()}"
    point_prefs_at(url)
    prefs = bpy.context.preferences.addons[addon["module"].__name__].preferences
    prefs.start_local = True
    prefs.backend_command = f'"{SERVER_PYTHON}" -m latentbridge serve --model tiny --data-dir "{tmp_path / "data"}"'
    try:
        _quick(scene, 2)
        assert bpy.ops.latentbridge.generate() == {"FINISHED"}  # connecting starts the backend
        assert controller.backend.running and controller.backend.args[-4:] == ["--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
        job = list(controller.jobs.values())[-1]
        pump(controller, lambda: job.finished, 180, "the job on the started backend")
        assert job.state == "done" and len(job.results) == 1, (job.state, job.error, controller.backend.output()[-5:])
        assert controller.conn_state == "CONNECTED"
        assert bpy.ops.latentbridge.stop_backend() == {"FINISHED"}
        assert not controller.backend.running and controller.backend.status() == "Stopped"
    finally:
        prefs.start_local, prefs.backend_command = False, ""
        controller.backend.stop()
        controller.reset()
