"""Fixtures for the browser tests: Chromium (one per module) and real servers on the tiny model."""

from __future__ import annotations

import pytest
from web_helpers import ServeProcess, browser, chromium_or_skip


@pytest.fixture(scope="module")
def chromium():
    with browser(chromium_or_skip()) as instance:
        yield instance


@pytest.fixture(scope="module")
def make_server(tmp_path_factory):
    servers: list[ServeProcess] = []

    def make(**kwargs) -> ServeProcess:
        server = ServeProcess(tmp_path_factory.mktemp("serve") / "data", **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
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
