"""Fixtures for the server tests: the real app with the real Engine on the tiny model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from server_helpers import WsClient

# The backend tests' model factories (tiny LoRAs, upscalers) serve the compatibility tests too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from latentbridge.engine import Engine
from latentbridge.protocol import WS_PATH
from latentbridge.server import create_app
from latentbridge.settings import Settings


@pytest.fixture(scope="session")
def tiny_engine() -> Engine:
    """One loaded tiny engine for the session (loading is the slow part; apps share it, one at a time)."""
    engine = Engine(Settings(model="tiny"))
    engine.load()
    return engine


@pytest.fixture
def make_settings(tmp_path):
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"model": "tiny", "data_dir": tmp_path / "data", "preview_interval_s": 0.0}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_client(aiohttp_client, tiny_engine, make_settings):
    async def make(settings: Settings | None = None, engine: Any = None, **overrides: Any):
        settings = settings or make_settings(**overrides)
        return await aiohttp_client(create_app(settings, engine or tiny_engine))

    return make


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.fixture
def ws_connect(client):
    async def connect(test_client=None, **kwargs: Any) -> WsClient:
        return WsClient(await (test_client or client).ws_connect(WS_PATH, **kwargs))

    return connect
