"""Suite-wide environment: offline, quiet, and Blender's user folders in a throw-away place.

Set before anything imports transformers/diffusers/bpy, which read these at import time.
"""

import os
import tempfile

_home = tempfile.mkdtemp(prefix="latentbridge-tests-home-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `import bpy` writes to ~/.config/blender and ~/.cache; keep the user's real folders untouched.
os.environ["XDG_CONFIG_HOME"] = os.path.join(_home, "config")
os.environ["XDG_CACHE_HOME"] = os.path.join(_home, "cache")
os.environ["XDG_DATA_HOME"] = os.path.join(_home, "data")
os.environ["HF_HOME"] = os.path.join(_home, "hf")


import pytest  # noqa: E402 (after the environment above)


@pytest.fixture
def renders():
    """Counts the renders Blender starts (render_pre fires once per render): for the add-on's
    one-render-per-Generate rules."""
    import bpy

    count = []

    def on_render(*_args):
        count.append(1)

    bpy.app.handlers.render_pre.append(on_render)
    yield count
    bpy.app.handlers.render_pre.remove(on_render)
