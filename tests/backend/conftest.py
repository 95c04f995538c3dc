"""Engines on the built-in random models, built once per test session (they are deterministic)."""

import pytest
from engine_helpers import make_engine

from latentbridge.engine import Engine


@pytest.fixture(scope="session")
def engine() -> Engine:
    return make_engine("tiny")


@pytest.fixture(scope="session")
def inpaint_engine() -> Engine:
    return make_engine("tiny-inpaint")


@pytest.fixture(scope="session")
def sdxl_engine() -> Engine:
    return make_engine("tiny-sdxl")
