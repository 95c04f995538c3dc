"""The web page in a real headless Chromium against a real server (tiny model): submit, live
previews, cancel, a result with its recipe (copy, download, run again, vary seed), inpainting with
a mask painted in the page, the history after a reload (jobs of other clients too), and a form
built from what the server reports."""

from __future__ import annotations

import io
import json
import re
import time

from PIL import Image
from playwright.sync_api import expect
from web_helpers import tiny_request

from latentbridge import images

TIMEOUT_MS = 60_000


def open_page(page, server):
    page.goto(server.url + "/")
    page.wait_for_selector("body.ready", timeout=TIMEOUT_MS)


def fill(page, **fields):
    for field, value in fields.items():
        page.fill(f"#{field}", str(value))


def latest_job(server) -> dict:
    return server.json("/api/v1/jobs?limit=1")["jobs"][0]


def submitted(server, action) -> dict:
    """Do `action` (a click that submits) and return the job it made, as the server lists it."""
    before = {j["job_id"] for j in server.json("/api/v1/jobs?limit=1000")["jobs"]}
    action()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        new = [j for j in server.json("/api/v1/jobs?limit=1000")["jobs"] if j["job_id"] not in before]
        if new:
            return new[0]
        assert time.monotonic() < deadline, "no job was submitted"
        time.sleep(0.05)


def test_form_is_built_from_what_the_server_reports(page, server):
    open_page(page, server)
    hello = page.evaluate("""async () => {
        const sdk = await import('/web/sdk/index.js');
        const connection = await new sdk.LatentBridge(location.origin).connect();
        return connection.hello; }""")
    caps = hello["capabilities"]
    assert page.eval_on_selector_all("input[name=mode]", "els => els.map(e => e.value)") == caps["modes"]
    assert page.eval_on_selector_all("#sampler option", "els => els.map(e => e.value)") == caps["samplers"]
    assert page.eval_on_selector_all("#seamless option", "els => els.map(e => e.value)") == caps["seamless"]
    assert page.eval_on_selector_all("#preview-decoder option", "els => els.map(e => e.value)") == caps["preview_decoders"]
    assert page.get_attribute("#width", "max") == "1024"  # --max-width, not the schema's 4096
    assert page.get_attribute("#steps", "max") == "120"
    assert page.get_attribute("#width", "step") == "8"  # the schema's multipleOf
    assert page.input_value("#steps") == "20"  # the schema's default
    assert "my-model.safetensors" in page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
    page.click("summary")
    page.click("#add-lora")
    assert page.eval_on_selector_all(".lora-name option", "els => els.map(e => e.value)") == ["bronze-style.safetensors"]
    # Mode-dependent parts appear with their mode.
    assert page.is_hidden("#init-section") and page.is_hidden("#mask-section")
    page.click("text=inpaint")
    assert page.is_visible("#init-section") and page.is_visible("#mask-section")
    page.click("text=outpaint")
    assert page.is_visible("#outpaint-section") and page.is_hidden("#mask-section")
    assert page.console_errors == []


def test_the_form_follows_a_model_switch(page, server):
    open_page(page, server)
    samplers = page.eval_on_selector_all("#sampler option", "els => els.map(e => e.value)")
    page.select_option("#sampler", "euler")
    try:
        server.post("/api/v1/models/load", {"model": "tiny-sd3"})  # by another client
        # A transformer family: flow-matching Euler only, no tiling; the chosen sampler stays.
        page.wait_for_function("() => document.querySelectorAll('#sampler option').length === 2", timeout=TIMEOUT_MS)
        assert page.input_value("#sampler") == "euler"
        assert page.is_hidden("#seamless-field")
        expect(page.locator("#model-status")).to_contain_text("tiny-sd3")
        assert page.eval_on_selector_all("#model option", "els => els[0].textContent") == "tiny-sd3 (sd3)"
    finally:
        server.post("/api/v1/models/load", {"model": "tiny"})
    page.wait_for_function(f"() => document.querySelectorAll('#sampler option').length === {len(samplers)}",
                           timeout=TIMEOUT_MS)
    assert page.is_visible("#seamless-field")


def test_submit_watch_previews_then_open_the_result(page, server):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    open_page(page, server)
    # Long enough on a quiet machine (~2 s) for the page to show it running.
    fill(page, prompt="weathered bronze, verdigris", steps=120, width=256, height=256, guidance=1, seed=1234)
    job = submitted(server, lambda: page.click("#submit"))
    card = page.locator(".job-card").first
    expect(card).to_be_visible(timeout=TIMEOUT_MS)
    # A step preview is drawn and the progress bar moves while it runs.
    page.wait_for_function("() => { const c = document.querySelector('.job-card canvas.preview');"
                           " return c && c.width > 1; }", timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('.job-card progress')?.value > 0", timeout=TIMEOUT_MS)
    assert re.match(r"step \d+/120", card.locator(".step").inner_text())
    server.wait_finished(job["job_id"])
    thumb = page.locator(f"li.tile[data-job-id='{job['job_id']}'] img.thumb")
    expect(thumb).to_have_attribute("src", re.compile("^blob:"), timeout=TIMEOUT_MS)
    expect(page.locator(".job-card")).to_have_count(0)
    # Open it: the recipe is the one embedded in the PNG.
    thumb.click()
    expect(page.locator("#viewer")).to_be_visible()
    png = server.get(f"/api/v1/jobs/{job['job_id']}/results/0")
    embedded = images.read_png_request(png)
    expect(page.locator("#recipe-table")).to_contain_text("weathered bronze, verdigris")
    page.click("#copy-json")
    expect(page.locator(".toast").last).to_contain_text("JSON")
    assert json.loads(page.evaluate("navigator.clipboard.readText()")) == embedded.model_dump(mode="json")
    page.click("#copy-a1111")
    expect(page.locator(".toast").last).to_contain_text("A1111")
    assert page.evaluate("navigator.clipboard.readText()") == images.a1111_parameters(embedded, embedded.seed)
    with page.expect_download() as download:
        page.click("#download")
    assert open(download.value.path(), "rb").read() == png
    assert download.value.suggested_filename.endswith("-seed1234.png")
    assert page.console_errors == []


def test_run_again_gives_the_same_image_and_vary_seed_a_new_one(page, server):
    open_page(page, server)
    fill(page, prompt="run it again", steps=3, width=64, height=64, guidance=1, seed=99)
    first = submitted(server, lambda: page.click("#submit"))
    server.wait_finished(first["job_id"])
    page.locator(f"li.tile[data-job-id='{first['job_id']}'] .thumb-button").click()
    again = submitted(server, lambda: page.click("#run-again"))
    expect(page.locator("#viewer")).to_be_hidden()
    server.wait_finished(again["job_id"])
    png = server.get(f"/api/v1/jobs/{first['job_id']}/results/0")
    assert server.get(f"/api/v1/jobs/{again['job_id']}/results/0") == png  # same recipe, same pixels
    expect(page.locator(f"li.tile[data-job-id='{again['job_id']}'] .thumb-button")).to_be_visible(timeout=TIMEOUT_MS)
    page.locator(f"li.tile[data-job-id='{again['job_id']}'] .thumb-button").click()
    varied = submitted(server, lambda: page.click("#vary-seed"))
    assert varied["request"]["seed"] != 99 and varied["request"]["prompt"] == "run it again"
    # Edit in form: the recipe fills the form; use as init image: img2img from this result.
    page.fill("#prompt", "something else")
    page.fill("#seed", "")
    page.locator(f"li.tile[data-job-id='{first['job_id']}'] .thumb-button").click()
    page.click("#edit-recipe")
    assert page.input_value("#prompt") == "run it again" and page.input_value("#seed") == "99"
    assert page.input_value("#steps") == "3"
    page.locator(f"li.tile[data-job-id='{first['job_id']}'] .thumb-button").click()
    page.click("#use-as-init")
    assert page.is_checked("input[name=mode][value=img2img]")
    expect(page.locator("#init-preview")).to_be_visible()
    expect(page.locator("#width")).to_have_value("64")


def test_cancel_from_the_page(page, server):
    open_page(page, server)
    fill(page, prompt="a long one", steps=120, width=512, height=512, guidance=1)  # cancelled long before its end
    job = submitted(server, lambda: page.click("#submit"))
    card = page.locator(f".job-card[data-job-id='{job['job_id']}']")
    expect(card.locator(".badge")).to_have_text("running", timeout=TIMEOUT_MS)
    card.locator("button", has_text="Cancel").click()
    assert server.wait_finished(job["job_id"])["state"] == "cancelled"
    expect(page.locator(f"li.tile[data-job-id='{job['job_id']}'] .badge")).to_have_text("cancelled", timeout=TIMEOUT_MS)


def test_inpaint_with_a_mask_painted_in_the_page(page, server, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (128, 96), (40, 90, 160)).save(init)
    open_page(page, server)
    page.click("text=inpaint")
    fill(page, prompt="a red door", steps=3, guidance=1)
    page.set_input_files("#init-file", str(init))
    page.wait_for_function("() => document.querySelector('.mask-overlay').width === 128")
    assert page.input_value("#width") == "128" and page.input_value("#height") == "96"  # the init image's size
    page.click("#submit")  # nothing painted yet: the page says so and sends nothing
    expect(page.locator("#form-error")).to_contain_text("Paint the area")
    box = page.locator(".mask-overlay").bounding_box()
    page.fill("#mask-brush", "16")
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.5, steps=10)
    page.mouse.up()
    job = submitted(server, lambda: page.click("#submit"))
    expect(page.locator("#form-error")).to_have_text("")
    assert job["request"]["mode"] == "inpaint"
    assert server.wait_finished(job["job_id"])["state"] == "done"
    mask = Image.open(io.BytesIO(server.get(f"/api/v1/jobs/{job['job_id']}/inputs/mask"))).convert("L")
    assert mask.size == (128, 96)
    assert mask.getpixel((64, 48)) == 255  # painted: repaint
    assert mask.getpixel((64, 5)) == 0 and mask.getpixel((5, 48)) == 0  # not painted: keep


def test_outpaint_extends_the_image(page, server, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 60, 60)).save(init)
    open_page(page, server)
    page.click("text=outpaint")
    page.set_input_files("#init-file", str(init))
    fill(page, prompt="more", steps=2, guidance=1, **{"outpaint-right": 32})
    job = submitted(server, lambda: page.click("#submit"))
    assert server.wait_finished(job["job_id"])["state"] == "done"
    result = Image.open(io.BytesIO(server.get(f"/api/v1/jobs/{job['job_id']}/results/0")))
    assert result.size == (96, 64)


def test_a_server_error_is_shown_next_to_its_field(page, server):
    open_page(page, server)
    fill(page, prompt="too many steps", steps=500)  # above --max-steps 120; the form does not block it
    page.click("#submit")
    expect(page.locator("#form-error")).to_contain_text("steps", timeout=TIMEOUT_MS)
    assert page.get_attribute("#steps", "aria-invalid") == "true"


def test_history_after_a_reload_shows_every_clients_jobs(page, server):
    open_page(page, server)
    # Another client (plain REST) starts a job while the page is open: the queue shows it live,
    # with previews that reach the page over its own websocket.
    # Long (cancelled once seen): the page finds it by polling the history every 2 s.
    other = server.post("/api/v1/jobs", {"request": tiny_request(prompt="from another client", steps=120,
                                                                  width=512, height=512)})
    card = page.locator(f".job-card[data-job-id='{other['job_id']}']")
    expect(card).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_function(f"() => document.querySelector(\".job-card[data-job-id='{other['job_id']}'] canvas\")"
                           "?.width > 1", timeout=TIMEOUT_MS)
    server.post(f"/api/v1/jobs/{other['job_id']}/cancel", {})
    done = server.post("/api/v1/jobs", {"request": tiny_request(prompt="finished elsewhere")})
    server.wait_finished(other["job_id"])
    server.wait_finished(done["job_id"])
    before = server.json("/api/v1/jobs?limit=60")["jobs"]
    page.reload()
    page.wait_for_selector("body.ready", timeout=TIMEOUT_MS)
    expect(page.locator(f"li.tile[data-job-id='{done['job_id']}']")).to_contain_text("finished elsewhere",
                                                                                    timeout=TIMEOUT_MS)
    expect(page.locator(f"li.tile[data-job-id='{other['job_id']}'] .badge")).to_have_text("cancelled")
    shown = page.eval_on_selector_all("li.tile", "els => els.map(e => e.dataset.jobId)")
    assert shown == [j["job_id"] for j in before if j["state"] not in ("queued", "running")]
