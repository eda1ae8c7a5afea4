"""The operator's web panel, served by episode_manager_node (stdlib HTTP, no outside assets).

GET  /                  the page (large Success / Failure / Discard / Ready buttons, keys S F D R)
GET  /api/state         JSON: task, group, episode, state, versions and success rates, learner
GET  /api/thumbnail.png the latest camera frame
POST /api/mark          {"outcome": "success"|"failure"|"discard", "episode_id": "..."}
POST /api/ready         scene reset done (operator reset mode)
POST /api/pause         {"paused": true|false}: stop / resume starting groups
POST /api/rollback      {"version": N}: go on from stored version N (learner restore)
Binds 127.0.0.1 by default; any other address requires a token (header X-Panel-Token or ?token=).
Every action goes through the same code as the episode manager's ROS services.
"""
from __future__ import annotations

import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import parse_qs, urlparse

from .panel_page import PAGE

LOCAL = ("127.0.0.1", "localhost", "::1")


class PanelBackend(Protocol):
    def snapshot(self) -> dict: ...
    def mark_episode(self, episode_id: str, outcome: str, source: str) -> tuple[bool, str]: ...
    def scene_is_ready(self) -> tuple[bool, str]: ...
    def set_paused(self, paused: bool) -> tuple[bool, str]: ...
    def rollback(self, version: int) -> tuple[bool, str]: ...
    def thumbnail_png(self) -> bytes | None: ...


class PanelServer:
    def __init__(self, backend: PanelBackend, host: str = "127.0.0.1", port: int = 8080,
                 token: str = "") -> None:
        if host not in LOCAL and not token:
            raise ValueError(f"the panel binds to {host!r}, beyond this machine: set "
                             "panel_token (or bind 127.0.0.1)")
        self.backend, self.token = backend, token
        handler = type("Handler", (_Handler,), {"panel": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="panel",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    panel: PanelServer

    def log_message(self, fmt, *args) -> None:       # keep the node's log for the node
        pass

    def _authorized(self) -> bool:
        if not self.panel.token:
            return True
        given = self.headers.get("X-Panel-Token") or \
            parse_qs(urlparse(self.path).query).get("token", [""])[0]
        return hmac.compare_digest(given, self.panel.token)

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj).encode())

    def do_GET(self) -> None:
        if not self._authorized():
            return self._json(401, {"error": "missing or wrong panel token"})
        path = urlparse(self.path).path
        if path == "/":
            return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        if path == "/api/state":
            return self._json(200, self.panel.backend.snapshot())
        if path == "/api/thumbnail.png":
            png = self.panel.backend.thumbnail_png()
            return self._send(200, png, "image/png") if png else self._json(404, {
                "error": "no camera image yet"})
        self._json(404, {"error": f"no such page {path}"})

    def do_POST(self) -> None:
        if not self._authorized():
            return self._json(401, {"error": "missing or wrong panel token"})
        try:
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}") if n <= 65536 else None
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object (at most 64 KiB)")
        except ValueError as e:
            return self._json(400, {"accepted": False, "message": f"bad request: {e}"})
        b, path = self.panel.backend, urlparse(self.path).path
        try:
            if path == "/api/mark":
                ok, msg = b.mark_episode(str(body.get("episode_id", "")),
                                         str(body.get("outcome", "")), "panel")
            elif path == "/api/ready":
                ok, msg = b.scene_is_ready()
            elif path == "/api/pause":
                ok, msg = b.set_paused(bool(body.get("paused", True)))
            elif path == "/api/rollback":
                ok, msg = b.rollback(int(body["version"]))
            else:
                return self._json(404, {"error": f"no such action {path}"})
        except (KeyError, TypeError, ValueError) as e:
            return self._json(400, {"accepted": False, "message": f"bad request: {e!r}"})
        self._json(200, {"accepted": ok, "message": msg})
