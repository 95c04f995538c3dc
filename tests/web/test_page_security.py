"""The page's own security, in a real Chromium: a page served from another local port cannot drive
the API (fetch, no-cors posts, plain HTML forms, websockets) nor frame ours; on a token server the
token is asked for once, kept in session storage, and never shows up in a URL, a cookie, local
storage, the console or the server's log."""

from __future__ import annotations

import http.server
import re
import threading
import time

import pytest
from playwright.sync_api import expect
from web_helpers import TOKEN, free_port

TIMEOUT_MS = 60_000

EVIL_PAGE = """<!doctype html><html><body>
<iframe id="framed" src="{api}/"></iframe>
<iframe name="sink"></iframe>
<form id="form" action="{api}/api/v1/jobs" method="post" enctype="text/plain" target="sink">
  <input name='{{"request": {{"prompt": "form", "steps": 2, "width": 64, "height": 64}}, "x": "' value='"}}'>
</form>
<script>
const api = "{api}";
const body = JSON.stringify({{request: {{prompt: "evil", steps: 2, width: 64, height: 64}}}});
async function attempt(name, fn) {{
  try {{ window.results[name] = "ok:" + await fn(); }} catch (e) {{ window.results[name] = "refused:" + e.name; }}
}}
window.results = {{}};
(async () => {{
  await attempt("json_post", async () => (await fetch(api + "/api/v1/jobs", {{method: "POST",
      headers: {{"Content-Type": "application/json"}}, body}})).status);
  await attempt("simple_post", async () => (await fetch(api + "/api/v1/jobs", {{method: "POST", mode: "no-cors",
      headers: {{"Content-Type": "text/plain"}}, body}})).type);
  await attempt("read_history", async () => (await (await fetch(api + "/api/v1/jobs")).text()).length);
  await attempt("websocket", () => new Promise((resolve, reject) => {{
    const ws = new WebSocket(api.replace("http", "ws") + "/api/v1/ws");
    ws.onopen = () => {{ ws.send(JSON.stringify({{type: "submit", request: {{prompt: "ws", steps: 2}}}})); resolve("open"); }};
    ws.onerror = () => reject(new Error("websocket refused"));
  }}));
  document.getElementById("form").submit();
  window.results.done = true;
}})();
</script></body></html>"""


@pytest.fixture
def evil_origin(server):
    """Another local web server (another port: another origin) serving a hostile page."""
    html = EVIL_PAGE.format(api=server.url).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_page_on_another_local_port_cannot_drive_the_api(page, server, evil_origin):
    jobs_before = server.json("/api/v1/jobs?limit=1000")["jobs"]
    page.goto(evil_origin + "/")
    page.wait_for_function("() => window.results && window.results.done", timeout=TIMEOUT_MS)
    results = page.evaluate("window.results")
    assert results["json_post"].startswith("refused"), results  # the preflight is refused
    assert results["read_history"].startswith("refused"), results  # nothing readable cross-origin
    assert results["websocket"].startswith("refused"), results  # the upgrade is refused (403)
    assert results["simple_post"] == "ok:opaque", results  # sent blind, without a preflight ...
    time.sleep(1.0)  # ... and the plain form post: give both time to reach the server
    assert server.json("/api/v1/jobs?limit=1000")["jobs"] == jobs_before  # ... and refused: no job was made
    # Our page cannot be framed by it either (frame-ancestors 'none'): Chromium shows its error page.
    frame = page.query_selector("#framed").content_frame()
    assert frame is not None and frame.query_selector("#submit-form") is None, frame.url


def test_the_token_is_asked_once_and_never_leaks(chromium, token_server):
    context = chromium.new_context()
    page = context.new_page()
    urls: list[str] = []
    console: list[str] = []
    ws_frames: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.on("console", lambda m: console.append(m.text))
    page.on("websocket", lambda ws: (urls.append(ws.url), ws.on("framesent", lambda f: ws_frames.append(str(f)))))
    page.goto(token_server.url + "/")
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible(timeout=TIMEOUT_MS)
    page.fill("#token-input", "wrong-token")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#token-error")).to_contain_text("refused")
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("body.ready", timeout=TIMEOUT_MS)
    expect(dialog).to_be_hidden()
    # It works: a job runs and its result shows (fetched with the header, shown as a blob: URL).
    page.fill("#prompt", "behind a token")
    page.fill("#steps", "2")
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.click("#submit")
    thumb = page.locator("li.tile img.thumb").first
    expect(thumb).to_have_attribute("src", re.compile("^blob:"), timeout=TIMEOUT_MS)
    # Kept for this tab in session storage only.
    assert page.evaluate("sessionStorage.getItem('latentbridge.token')") == TOKEN
    assert TOKEN not in page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
    assert page.evaluate("document.cookie") == "" and context.cookies() == []
    # A reload in the same tab needs no new prompt.
    page.reload()
    page.wait_for_selector("body.ready", timeout=TIMEOUT_MS)
    expect(dialog).to_be_hidden()
    # Never in a URL (page, API, websocket), the console or the server log.
    assert urls and not [u for u in urls if TOKEN in u]
    assert not [m for m in console if TOKEN in m]
    assert TOKEN not in token_server.output()
    # On the websocket it travels only inside `hello`.
    assert [f for f in ws_frames if TOKEN in f] and all('"type":"hello"' in f or '"type": "hello"' in f
                                                      for f in ws_frames if TOKEN in f)
    # "Forget token" ends it for this tab too.
    page.click("#sign-out")
    expect(dialog).to_be_visible(timeout=TIMEOUT_MS)
    assert page.evaluate("sessionStorage.getItem('latentbridge.token')") is None
    context.close()


def test_another_tab_must_give_the_token_again(chromium, token_server):
    context = chromium.new_context()
    page = context.new_page()
    page.goto(token_server.url + "/")
    expect(page.locator("#token-dialog")).to_be_visible(timeout=TIMEOUT_MS)
    assert page.evaluate("sessionStorage.length") == 0
    context.close()
