"""The built zip installs into a fresh extensions repository and the add-on is really enabled."""

from __future__ import annotations

import tomllib
import zipfile

import pytest

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()



@pytest.mark.smoke
def test_zip_has_manifest_wheel_and_network_permission(addon):
    with zipfile.ZipFile(addon["zip"]) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert {"__init__.py", "connection.py", "wire.py", "blender_manifest.toml"} <= names
    assert manifest["id"] == "latentbridge" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] >= "4.2.0"
    assert manifest["wheels"] and all(w.endswith("py3-none-any.whl") and w[2:] in names for w in manifest["wheels"])
    network = manifest["permissions"]["network"]
    assert network and not network.endswith(".")
    assert not any("__pycache__" in n for n in names)


@pytest.mark.smoke
def test_enabled_and_registered(addon):
    import addon_utils
    import bpy

    assert lb_blender.ADDON_MODULE in bpy.context.preferences.addons
    assert addon_utils.check(lb_blender.ADDON_MODULE) == (True, True)
    assert (addon["repo_dir"] / "latentbridge" / "blender_manifest.toml").is_file()
    assert hasattr(bpy.types.Scene, "latentbridge")
    for op in ("generate", "generate_texture", "cancel", "regenerate", "reuse_seed", "random_seed", "connect"):
        assert hasattr(bpy.ops.latentbridge, op) and getattr(bpy.ops.latentbridge, op).get_rna_type()
    for panel, space in (("LATENTBRIDGE_PT_view3d", "VIEW_3D"), ("LATENTBRIDGE_PT_image", "IMAGE_EDITOR")):
        assert getattr(bpy.types, panel).bl_region_type == "UI"
        for sub, label in (("advanced", "Sampling"), ("connection", "Server")):
            child = getattr(bpy.types, f"{panel}_{sub}")
            assert (child.bl_space_type, child.bl_parent_id, child.bl_label) == (space, panel, label)
    prefs = bpy.context.preferences.addons[lb_blender.ADDON_MODULE].preferences
    assert prefs.server_url.startswith("http://127.0.0.1:")


@pytest.mark.smoke
def test_bundled_wheel_was_installed_by_blender(addon):
    import bpy

    site = list((lb_blender.Path(bpy.utils.user_resource("EXTENSIONS", path=".local"))).glob("lib/python*/site-packages"))
    assert site and (site[0] / "websockets" / "sync" / "client.py").is_file()


def test_survives_a_new_file(scene):
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    assert hasattr(bpy.context.scene, "latentbridge")
    assert bpy.context.scene.latentbridge.steps == 20


def test_request_from_settings(scene):
    settings = scene.latentbridge
    settings.prompt, settings.steps, settings.sampler = "bronze", 4, "ddim"
    request = settings.build_request(scene, 42)
    assert request["mode"] == "txt2img" and request["seed"] == 42 and request["sampler"] == "ddim"
    assert (request["width"], request["height"]) == (64, 64)  # render resolution

    scene.render.resolution_x, scene.render.resolution_percentage = 203, 50  # → 101 px → 96
    scene.render.resolution_y = 64
    assert settings.request_size(scene) == (96, 64)

    settings.mode = "texture"
    assert settings.seamless == "xy"  # one seamless setting; a texture tiles unless told otherwise
    settings.seamless = "x"
    request = settings.build_request(scene, 1)
    assert request["mode"] == "txt2img" and request["seamless"] == "x"

    settings.mode = "outpaint"
    settings.outpaint_left, settings.outpaint_bottom = 32, 16
    assert settings.build_request(scene, 1)["outpaint"] == {"left": 32, "top": 0, "right": 0, "bottom": 16}

    settings.mode, settings.mask_blur, settings.mask_invert = "inpaint", 8, True
    assert settings.build_request(scene, 1)["mask"] == {"blur": 8, "invert": True}

    lora = settings.loras.add()
    lora.name, lora.weight = "style.safetensors", 0.5
    settings.loras.add()  # unnamed: left out
    assert settings.build_request(scene, 1)["loras"] == [{"name": "style.safetensors", "weight": 0.5}]


def test_seed_operators(scene):
    import bpy

    settings = scene.latentbridge
    settings.random_seed = True
    first = settings.next_seed()
    assert first == settings.seed
    assert bpy.ops.latentbridge.reuse_seed.poll() is False  # no result yet
    settings.last_seed = 1234
    assert bpy.ops.latentbridge.reuse_seed() == {"FINISHED"}
    assert settings.seed == 1234 and settings.random_seed is False
    assert settings.next_seed() == 1234  # kept while random is off
    assert bpy.ops.latentbridge.lora_add() == {"FINISHED"}
    assert len(settings.loras) == 1
    assert bpy.ops.latentbridge.lora_remove() == {"FINISHED"}
    assert len(settings.loras) == 0


def test_generate_without_selection_reports_clearly(scene):
    import bpy

    for obj in scene.objects:
        obj.select_set(False)
    with pytest.raises(RuntimeError, match="Select the objects to texture"):
        bpy.ops.latentbridge.generate(mode="texture")
    assert "Select the objects" in scene.latentbridge.error
