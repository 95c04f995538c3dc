"""Fixtures for the browser tests: Chromium (one per module) and real servers on the tiny model
(one per session: starting one costs seconds)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from web_helpers import TOKEN, ServeProcess, browser, chromium_or_skip


# A loaded CI machine can be slow: assertions wait up to 30 s (a passing one returns at once).
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def chromium():
    with browser(chromium_or_skip()) as instance:
        yield instance




@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server for the page tests: a LoRA and a model in its folders, tighter limits than the
    schema's (the form must follow the server's)."""
    loras = tmp_path_factory.mktemp("loras")
    (loras / "bronze-style.safetensors").write_bytes(b"")
    models = tmp_path_factory.mktemp("models")
    (models / "my-model.safetensors").write_bytes(b"")  # listed, never loaded
    server = ServeProcess(tmp_path_factory.mktemp("serve") / "data",
                          extra=["--lora-dirs", str(loras), "--model-dirs", str(models), "--max-width", "1024",
                                 "--max-steps", "120"])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_server(tmp_path_factory):
    server = ServeProcess(tmp_path_factory.mktemp("serve") / "data", token=TOKEN)
    yield server
    server.stop()


@pytest.fixture
def page(chromium):
    """A fresh browser context (empty storage) and page; console errors fail the test."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.console_errors = errors
    yield page
    context.close()
