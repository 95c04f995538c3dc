"""Native conventions: polls, reports, tooltips, icons, menus, presets, prompt history, Esc,
online access, the LoRA picker and batches."""

from __future__ import annotations


import pytest

import lb_blender  # noqa: E402

lb_blender.bpy_or_skip()




def _ours(bpy):
    return [getattr(bpy.types, name) for name in dir(bpy.types) if name.startswith("LATENTBRIDGE_")]


def _props(rna):
    return [p for p in rna.properties if p.identifier != "rna_type"]


def test_every_property_has_a_tooltip(addon):
    import bpy

    missing = []
    import importlib

    extra = [importlib.import_module(f"{lb_blender.ADDON_MODULE}.{m}").classes for m in ("control_ui", "texture_ui")]
    groups = [c.bl_rna for c in addon["properties"].classes + sum(extra, ()) if issubclass(c, bpy.types.PropertyGroup)]
    groups.append(bpy.context.preferences.addons[lb_blender.ADDON_MODULE].preferences.bl_rna)
    operators = [getattr(bpy.ops.latentbridge, op_name).get_rna_type() for op_name in dir(bpy.ops.latentbridge)]
    assert len(operators) >= 20
    for rna in groups + operators:
        for prop in _props(rna):
            if prop.identifier in ("bl_idname", "remove_name", "remove_active"):
                continue  # Blender's own (AddonPreferences, AddPresetBase), not ours to describe
            if not prop.description:
                missing.append(f"{rna.identifier}.{prop.identifier}")
    assert not missing


def test_one_seamless_setting(addon):
    names = {p.identifier for p in addon["properties"].LATENTBRIDGE_PG_settings.bl_rna.properties}
    assert "seamless" in names and not [n for n in names if "seamless" in n and n != "seamless"]


def test_polls_refuse_what_makes_no_sense(addon, scene):
    import bpy

    ctl = addon["controller"].controller
    assert ctl.connection is None and not ctl.backend.running
    assert bpy.ops.latentbridge.generate.poll()
    assert not bpy.ops.latentbridge.cancel.poll()  # nothing runs
    assert not bpy.ops.latentbridge.disconnect.poll()  # not connected
    assert not bpy.ops.latentbridge.stop_backend.poll()  # nothing started
    assert not bpy.ops.latentbridge.show_error.poll()
    assert not bpy.ops.latentbridge.recall_prompt.poll()
    scene.latentbridge.running = True
    assert not bpy.ops.latentbridge.generate.poll() and not bpy.ops.latentbridge.animate.poll()
    for obj in scene.objects:
        obj.select_set(False)
    scene.latentbridge.running = False
    assert not bpy.ops.latentbridge.generate_texture.poll()  # no selection


def test_every_operator_has_a_poll_or_always_applies(addon):
    import bpy

    always = {"latentbridge.connect", "latentbridge.refresh_models", "latentbridge.report_message", "latentbridge.preset_add"}
    ops = [c for c in _ours(bpy) if issubclass(c, bpy.types.Operator)]
    assert len(ops) >= 20
    for op in ops:
        assert op.bl_idname in always or "poll" in op.__dict__, op.bl_idname
        assert op.__doc__ and op.bl_label


def test_icons_are_distinct_and_exist(addon):
    import bpy

    icons = addon["feedback"].ICONS
    valid = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())
    assert set(icons.values()) <= valid
    assert len(set(icons.values())) == len(icons)


def test_menus_status_bar_and_headers_are_extended(addon):
    import bpy

    feedback, menus = addon["feedback"], addon["menus"]
    for menu, draw in menus.MENU_ENTRIES:
        assert draw in getattr(bpy.types, menu)._dyn_ui_initialize()
    assert feedback.draw_status_bar in bpy.types.STATUSBAR_HT_header._dyn_ui_initialize()
    for header in ("VIEW3D_HT_header", "IMAGE_HT_header"):
        assert feedback.draw_header in getattr(bpy.types, header)._dyn_ui_initialize()


def test_presets_save_and_restore_prompt_and_settings(addon, scene):
    import bpy

    settings = scene.latentbridge
    settings.prompt, settings.steps, settings.sampler, settings.batch_size = "weathered bronze", 12, "ddim", 3
    assert bpy.ops.latentbridge.preset_add(name="Bronze") == {"FINISHED"}
    settings.prompt, settings.steps, settings.sampler, settings.batch_size = "other", 30, "euler", 1
    preset = bpy.utils.preset_find("Bronze", addon["menus"].PRESET_SUBDIR)
    assert preset
    assert bpy.ops.script.execute_preset(filepath=preset, menu_idname="LATENTBRIDGE_MT_presets") == {"FINISHED"}
    assert (settings.prompt, settings.steps, settings.sampler, settings.batch_size) == ("weathered bronze", 12, "ddim", 3)


def test_prompt_history_per_file_with_recall(addon, scene, fake, tmp_path):
    import bpy

    settings = scene.latentbridge
    for prompt in ("bronze", "rust", "bronze"):
        settings.prompt = prompt
        bpy.ops.latentbridge.generate()
        fake.feed(addon["connection"].Incoming("event", {"type": "error", "job_id": None, "code": "invalid_request", "message": "x"}))
        addon["controller"].controller.drain()
    assert [h.prompt for h in settings.history] == ["bronze", "rust"]  # newest first, no duplicates
    settings.prompt = ""
    assert bpy.ops.latentbridge.recall_prompt(index=1) == {"FINISHED"} and settings.prompt == "rust"
    path = str(tmp_path / "history.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.read_homefile(use_empty=True)
    assert len(bpy.context.scene.latentbridge.history) == 0  # another file, another history
    bpy.ops.wm.open_mainfile(filepath=path)
    assert [h.prompt for h in bpy.context.scene.latentbridge.history] == ["bronze", "rust"]


def test_esc_cancels_the_job_the_artist_started(addon, scene, fake):
    import bpy

    ops = addon["operators"]
    bpy.ops.latentbridge.generate()
    ref = fake.sent[-1][3]
    fake.feed(addon["connection"].Incoming("event", {"type": "accepted", "job_id": "j1", "client_ref": ref, "position": 0}))
    addon["controller"].controller.drain()
    assert ops.modal_step(ref, "MOUSEMOVE", "NOTHING") == {"PASS_THROUGH"}  # the UI keeps working
    assert ops.modal_step(ref, "ESC", "PRESS") == {"FINISHED"}
    assert fake.sent[-1] == ("cancel", "j1")


def test_remote_server_needs_online_access(addon, scene, monkeypatch):
    import bpy

    ctl_mod = addon["controller"]
    assert ctl_mod.online_refusal("http://127.0.0.1:7423", online_access=False) == ""  # loopback needs nothing
    assert ctl_mod.online_refusal("http://gpu-box.invalid:7423", online_access=True) == ""
    text = ctl_mod.online_refusal("http://gpu-box.invalid:7423", online_access=False)
    assert "Allow Online Access" in text and "gpu-box.invalid" in text
    if bpy.app.online_access:
        pytest.skip("this Blender has online access on")
    started = []
    monkeypatch.setattr(ctl_mod, "Connection", lambda *a, **k: started.append(a))  # nothing may connect
    prefs = bpy.context.preferences.addons[lb_blender.ADDON_MODULE].preferences
    prefs.server_url = "http://gpu-box.invalid:7423"
    try:
        with pytest.raises(RuntimeError, match="Allow Online Access"):
            bpy.ops.latentbridge.generate()
        with pytest.raises(RuntimeError, match="Allow Online Access"):
            bpy.ops.latentbridge.connect()
        assert started == [] and "Allow Online Access" in scene.latentbridge.error
    finally:
        prefs.server_url = "http://127.0.0.1:7423"


def test_full_error_is_kept_and_wrapped(addon, scene):
    import bpy

    feedback = addon["feedback"]
    long = "request.loras.0.name: " + "a very long explanation of what went wrong " * 8
    scene.latentbridge.error = long
    lines = feedback.wrap(long, 280)
    assert len(lines) > 3 and " ".join(lines) == " ".join(long.split())
    assert bpy.ops.latentbridge.show_error.poll()
    with pytest.raises(RuntimeError, match="a very long explanation"):  # the whole text, reported as an error
        bpy.ops.latentbridge.show_error()


def test_lora_picker_offers_the_server_list(addon, scene, fake):
    import bpy

    ctl = addon["controller"].controller
    fake.feed(addon["connection"].Incoming("loras", {"loras": [{"name": "ink.safetensors", "path": "/l/ink.safetensors"}, {"name": "oil.safetensors", "path": ""}]}))
    ctl.drain()
    assert addon["properties"]._lora_search(None, bpy.context, "OIL") == ["oil.safetensors"]
    bpy.ops.latentbridge.lora_add(name="ink.safetensors")
    scene.latentbridge.loras[0].weight = 0.6
    assert scene.latentbridge.build_request(scene, 1)["loras"] == [{"name": "ink.safetensors", "weight": 0.6}]
    fake.feed(addon["connection"].Incoming("loras", {"loras": [], "error": "This server does not list LoRAs (HTTP 404): type their file names"}))
    ctl.drain()
    assert "does not list LoRAs" in ctl.loras_note




def test_batch_packs_each_image_with_its_recipe_and_one_can_be_picked(addon, scene, fake):
    import bpy

    Incoming = addon["connection"].Incoming
    ctl = addon["controller"].controller
    settings = scene.latentbridge
    settings.mode, settings.batch_size, settings.random_seed, settings.seed = "texture", 3, False, 40
    assert bpy.ops.latentbridge.generate_texture() == {"FINISHED"}
    request, ref = fake.sent[-1][1], fake.sent[-1][3]
    assert request["batch_size"] == 3 and request["seed"] == 40
    fake.feed(Incoming("event", {"type": "accepted", "job_id": "b1", "client_ref": ref, "position": 0}))
    ctl.drain()
    for i in range(3):
        seed = 40 + i
        recipe = {**request, "seed": seed, "batch_size": 1}
        fake.feed(Incoming("event", {"type": "result", "job_id": "b1", "index": i, "seed": seed, "width": 64, "height": 64, "request": recipe}))
        fake.feed(Incoming("result", header={"kind": "result", "format": "png", "job_id": "b1", "index": i}, data=lb_blender.png_bytes((50 * i, 0, 0))))
        ctl.drain()
        assert len(settings.batch) == i + 1  # shown as they arrive
    fake.feed(Incoming("event", {"type": "done", "job_id": "b1", "count": 3, "elapsed_s": 1.0}))
    ctl.drain()
    images = [bpy.data.images[item.image] for item in settings.batch]
    assert [im["latentbridge_seed"] for im in images] == [40, 41, 42]
    assert all(im.packed_file is not None and addon["apply"].stored_request(im)["batch_size"] == 1 for im in images)
    cube = scene.objects["Cube"]
    node = cube.active_material.node_tree.nodes["Latent Bridge Texture"]
    assert settings.last_result == images[0].name and node.image == images[0]
    assert bpy.ops.latentbridge.use_result(image=images[2].name) == {"FINISHED"}
    assert settings.last_result == images[2].name and settings.last_seed == 42 and node.image == images[2]
