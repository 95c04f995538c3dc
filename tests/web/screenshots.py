"""Take the screenshots of the web page for docs/web.md (docs/images/web-*.png).

    PYTHONPATH=backend python tests/web/screenshots.py

A real server on the built-in `tiny` model (random weights: the images are noise, the page is
real) and Debian's Chromium, as in the browser tests.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web_helpers import ROOT, ServeProcess, browser, tiny_request  # noqa: E402

OUT = ROOT / "docs" / "images"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="latentbridge-shots-"))
    init = work / "photo.png"
    picture = Image.new("RGB", (256, 192), (70, 110, 160))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 130, 256, 192), fill=(80, 130, 70))
    draw.rectangle((90, 70, 170, 140), fill=(180, 150, 110))
    draw.polygon([(80, 72), (130, 35), (180, 72)], fill=(150, 60, 50))
    picture.save(init)
    server = ServeProcess(work / "data")
    try:
        for i, prompt in enumerate(["weathered bronze, verdigris", "mossy stone wall", "rusted iron plate",
                                    "oak bark, close-up"]):
            extra = {"batch_size": 2, "seamless": "xy"} if i == 1 else {}
            server.post("/api/v1/jobs", {"request": tiny_request(prompt=prompt, steps=6, width=128, height=128,
                                                                 seed=100 + i, **extra)})
        server.wait_finished(server.json("/api/v1/jobs?limit=1")["jobs"][0]["job_id"])
        with browser() as chromium:
            page = chromium.new_page(viewport={"width": 1360, "height": 860}, device_scale_factor=1)
            page.goto(server.url + "/")
            page.wait_for_selector("body.ready")
            page.fill("#prompt", "weathered bronze, verdigris, ornate")
            for field, value in (("steps", 150), ("width", 256), ("height", 256), ("guidance", 1)):
                page.fill(f"#{field}", str(value))
            page.click("#submit")
            page.wait_for_function("() => document.querySelector('.job-card progress')?.value > 0.3", timeout=120_000)
            page.wait_for_selector("li.tile img.thumb[src^='blob:']")
            page.screenshot(path=str(OUT / "web-queue.png"))
            page.locator(".job-card button", has_text="Cancel").click()
            time.sleep(1.5)
            page.locator("li.tile.done .thumb-button").first.click()
            page.wait_for_selector("#viewer[open]")
            page.click("#viewer details summary")
            page.screenshot(path=str(OUT / "web-result.png"))
            page.click("#viewer-close")
            page.click("text=inpaint")
            page.set_input_files("#init-file", str(init))
            page.wait_for_function("() => document.querySelector('.mask-overlay').width === 256")
            page.fill("#prompt", "a red wooden door")
            box = page.locator(".mask-overlay").bounding_box()
            page.fill("#mask-brush", "28")
            page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.45)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.7, steps=12)
            page.mouse.move(box["x"] + box["width"] * 0.42, box["y"] + box["height"] * 0.68, steps=12)
            page.mouse.up()
            page.screenshot(path=str(OUT / "web-inpaint.png"), clip={"x": 0, "y": 0, "width": 1360, "height": 860})
    finally:
        server.stop()
    for name in ("web-queue.png", "web-result.png", "web-inpaint.png"):
        # 256 colours: a third of the bytes, no visible loss for a UI screenshot.
        shot = Image.open(OUT / name).convert("RGB")
        shot.quantize(256, method=Image.Quantize.MEDIANCUT).save(OUT / name, optimize=True)
        print(OUT / name)


if __name__ == "__main__":
    main()
