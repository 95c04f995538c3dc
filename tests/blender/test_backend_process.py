"""Starting a local backend for the artist (no bpy): the command line, the child process and
the status the preferences show."""

from __future__ import annotations

import socket
import sys
import time

import lb_blender

backend_process = lb_blender.source_module("backend_process")


def test_command_defaults_to_the_python_module_on_the_url_port():
    args = backend_process.backend_command("", "/opt/py/bin/python", "http://127.0.0.1:7500")
    assert args == ["/opt/py/bin/python", "-m", "latentbridge", "serve", "--host", "127.0.0.1", "--port", "7500"]
    assert backend_process.backend_command("", "", "localhost")[:4] == ["python3", "-m", "latentbridge", "serve"]
    assert backend_process.backend_command("", "", "localhost")[-2:] == ["--port", "7423"]
    custom = backend_process.backend_command("latentbridge serve --model 'my model' --port 9000", "", "http://127.0.0.1:7500")
    assert custom == ["latentbridge", "serve", "--model", "my model", "--port", "9000", "--host", "127.0.0.1"]


def test_status_tells_what_happened(tmp_path):
    backend = backend_process.LocalBackend()
    assert backend.status() == "Not started"
    backend.start([str(tmp_path / "no-such-program")])
    assert not backend.running and backend.status().startswith("Could not start")
    backend.start([sys.executable, "-c", "print('model not found: x'); raise SystemExit(3)"])
    backend.process.wait(10)
    deadline = time.monotonic() + 5
    while not backend.output() and time.monotonic() < deadline:  # the reader thread catches up
        time.sleep(0.01)
    assert backend.status() == "Exited with code 3: model not found: x"
    backend.start([sys.executable, "-c", "import time; time.sleep(60)"])
    assert backend.running and backend.status().startswith("Running (pid ")
    backend.stop()
    assert not backend.running and backend.status() == "Stopped"


def test_a_server_already_answering_is_used_not_started_again():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        url = f"http://127.0.0.1:{listening.getsockname()[1]}"
        assert backend_process.server_answers(url)
        assert not backend_process.should_start(url, already_running=False)
    assert not backend_process.server_answers(url)  # closed now: nothing answers
    assert backend_process.should_start(url, already_running=False)
    assert not backend_process.should_start(url, already_running=True)
    assert not backend_process.should_start("http://192.168.1.20:7423", already_running=False)  # not ours to start


def test_stop_and_restart_close_the_output_pipe():
    """Stop Local Backend (and starting again after an exit) left the child's stdout pipe open:
    a ResourceWarning when the Popen object was collected."""
    import gc
    import warnings

    backend = backend_process.LocalBackend()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend.start([sys.executable, "-c", "raise SystemExit(0)"])
        backend.process.wait(10)
        backend.start([sys.executable, "-c", "import time; time.sleep(60)"])  # after an exit
        backend.stop()
        gc.collect()
    pipes = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning) and "BufferedReader" in str(w.message)]
    assert not pipes  # (other tests' leftovers may be collected here too: only a pipe is ours)
