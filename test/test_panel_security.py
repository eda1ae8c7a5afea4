"""The panel accepts commands only from its own page (Chromium on another origin, a DNS
rebinding Host, malformed and oversized bodies, idle connections), and answers them all."""
import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from browser import chromium_page

from tinyvla_grpo_ros.nodes import panel_server
from tinyvla_grpo_ros.nodes.panel_server import PanelServer


class RecordingBackend:
    def __init__(self):
        self.calls = []

    def snapshot(self):
        return {"ok": True}

    def mark_episode(self, episode_id, outcome, source):
        self.calls.append(("mark", episode_id, outcome))
        return True, "marked"

    def scene_is_ready(self):
        self.calls.append(("ready",))
        return True, "ready"

    def set_paused(self, paused):
        self.calls.append(("pause", paused))
        return True, "paused"

    def rollback(self, version):
        self.calls.append(("rollback", version))
        return True, f"v{version}"

    def thumbnail_jpeg(self):
        return None


@pytest.fixture
def panel():
    backend = RecordingBackend()
    p = PanelServer(backend, "127.0.0.1", 0)
    p.start()
    yield p, backend
    p.stop()


def request(p, method, path, body=None, headers=None, raw=None):
    c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    h = {"Host": f"127.0.0.1:{p.port}"} | (headers or {})
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None and "Content-Length" not in h:
        h["Content-Length"] = str(len(data))
    c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in h.items():
        c.putheader(k, v)
    c.endheaders(data)
    r = c.getresponse()
    out = r.status, r.read()
    c.close()
    return out


def own(p):
    return {"X-CSRF-Token": p.csrf, "Content-Type": "application/json"}


def test_only_the_panels_own_requests_change_anything(panel):
    p, backend = panel
    assert request(p, "GET", "/api/state", headers={"Host": "evil.example"})[0] == 421
    assert request(p, "GET", "/api/state")[0] == 200
    page = request(p, "GET", "/")[1].decode()
    assert p.csrf in page and "@@CSRF@@" not in page
    # no CSRF token, a foreign Origin, a text/plain body: refused, nothing done
    assert request(p, "POST", "/api/ready", {}, {"Content-Type": "application/json"})[0] == 403
    assert request(p, "POST", "/api/ready", {}, own(p) | {"Origin": "http://evil.example"}
                   )[0] == 403
    assert request(p, "POST", "/api/ready", {}, own(p) | {"Content-Type": "text/plain"}
                   )[0] == 415
    assert backend.calls == []
    # strict bodies: types, ranges, size
    bad = [("/api/pause", {"paused": "false"}), ("/api/rollback", {"version": -1}),
           ("/api/rollback", {"version": 2**40}), ("/api/rollback", {"version": True}),
           ("/api/rollback", {}), ("/api/mark", {"outcome": "succes"}),
           ("/api/mark", {"outcome": "success", "episode_id": 7})]
    for path, body in bad:
        code, text = request(p, "POST", path, body, own(p))
        assert code == 400, (path, body, code, text)
    assert request(p, "POST", "/api/mark", raw=b"[" * 60_000, headers=own(p))[0] == 413
    assert request(p, "POST", "/api/mark", raw=b"", headers=own(p) | {
        "Content-Length": "-5"})[0] == 413
    assert request(p, "POST", "/api/mark", raw=b"[1]", headers=own(p))[0] == 400
    assert backend.calls == []
    # the panel's own requests work
    assert request(p, "POST", "/api/pause", {"paused": False}, own(p))[0] == 200
    assert request(p, "POST", "/api/rollback", {"version": 3}, own(p))[0] == 200
    assert backend.calls == [("pause", False), ("rollback", 3)]


def test_idle_connections_time_out_and_the_panel_keeps_answering(panel, monkeypatch):
    p, _ = panel
    monkeypatch.setattr(panel_server._Handler, "timeout", 0.5)
    idle = [socket.create_connection(("127.0.0.1", p.port)) for _ in range(50)]
    try:
        t0 = time.monotonic()
        assert request(p, "GET", "/api/state")[0] == 200
        assert time.monotonic() - t0 < 5
        time.sleep(1.5)
        closed = 0
        for s in idle:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
        assert closed == len(idle)
    finally:
        for s in idle:
            s.close()


def test_a_page_of_another_origin_cannot_press_the_panel_in_chromium(panel):
    p, backend = panel
    target = f"http://127.0.0.1:{p.port}"
    evil_page = f"""<html><body><form id=f method=POST action="{target}/api/pause"
      enctype="text/plain"><input name='{{"paused": true, "x": "' value='"}}'></form>
      <script>
      fetch("{target}/api/ready", {{method: "POST", mode: "no-cors",
            headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}}).catch(() => 0);
      fetch("{target}/api/rollback", {{method: "POST",
            headers: {{"Content-Type": "application/json", "X-CSRF-Token": "guess"}},
            body: JSON.stringify({{version: 0}})}}).catch(() => 0);
      setTimeout(() => document.getElementById("f").submit(), 300);
      </script></body></html>""".encode()

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(evil_page)))
            self.end_headers()
            self.wfile.write(evil_page)

        def log_message(self, *a):
            pass
    evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with chromium_page() as page:
            page.goto(f"http://localhost:{evil.server_address[1]}/")   # another origin
            page.wait_for_timeout(2000)
        assert backend.calls == [], backend.calls
    finally:
        evil.shutdown()
