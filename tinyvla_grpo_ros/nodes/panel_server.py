"""The operator's web panel, served by episode_manager_node (stdlib HTTP, no outside assets).

GET  /                  the page (large Success / Failure / Discard / Ready buttons, keys S F D R)
GET  /api/state         JSON: task, group, episode, state, versions and success rates, learner
GET  /api/thumbnail.jpg the latest camera frame, a small JPEG
POST /api/mark          {"outcome": "success"|"failure"|"discard", "episode_id": "..."}
POST /api/ready         scene reset done (operator reset mode)
POST /api/pause         {"paused": true|false}: stop / resume starting groups
POST /api/rollback      {"version": N}: go on from stored version N (learner restore)
POST /api/intervene     {"on": true|false}: the hold-to-intervene button (policy_node's
                        intervene service); the arm then follows the operator's teleop device

Only the panel's own page can press it:
- the Host header must name the address the panel is bound to (a DNS-rebinding page's
  `Host: evil.example` gets nothing);
- a state-changing request must carry the page's per-session CSRF token in the X-CSRF-Token
  header (another origin cannot read it, and a custom header needs a CORS preflight this server
  never answers), a JSON content type, and no foreign Origin;
- bodies are JSON objects of at most 4 KiB, with typed, range-checked fields;
- every connection times out after `TIMEOUT_S` (idle connections do not pile up threads).
Bound beyond localhost, the panel also needs its token: header X-Panel-Token, or the cookie the
page sets from `?token=` once (the token never travels in URLs after that).
Every action goes through the same code as the episode manager's ROS services.
"""
from __future__ import annotations

import hmac
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import parse_qs, urlparse

from .panel_page import PAGE

LOCAL = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 4096
TIMEOUT_S = 10.0
OUTCOMES = ("success", "failure", "discard")


class PanelBackend(Protocol):
    def snapshot(self) -> dict: ...
    def mark_episode(self, episode_id: str, outcome: str, source: str) -> tuple[bool, str]: ...
    def scene_is_ready(self) -> tuple[bool, str]: ...
    def set_paused(self, paused: bool) -> tuple[bool, str]: ...
    def rollback(self, version: int) -> tuple[bool, str]: ...
    def intervene(self, on: bool) -> tuple[bool, str]: ...
    def thumbnail_jpeg(self) -> bytes | None: ...


class BadRequest(ValueError):
    pass


class PanelServer:
    def __init__(self, backend: PanelBackend, host: str = "127.0.0.1", port: int = 8080,
                 token: str = "") -> None:
        if host not in LOCAL and not token:
            raise ValueError(f"the panel binds to {host!r}, beyond this machine: set "
                             "panel_token (or bind 127.0.0.1)")
        self.backend, self.token, self.host = backend, token, host
        self.csrf = secrets.token_urlsafe(24)         # this server's session: in its page only
        handler = type("Handler", (_Handler,), {"panel": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="panel",
                                       daemon=True)

    def host_ok(self, host: str) -> bool:
        """The Host header (or an Origin's netloc) names this panel's address. Bound to a
        wildcard address the panel cannot know its name; its token guards it then."""
        if self.host in ("0.0.0.0", "::", ""):
            return True
        names = set(LOCAL) | {"[::1]"} if self.host in LOCAL else {self.host}
        return host in {f"{n}:{self.port}" for n in names}

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def parse_action(path: str, body: dict) -> tuple:
    """A POST body -> the backend call's arguments; BadRequest names the field and the rule."""
    def field(name, kind, required=True):
        if name not in body:
            if required:
                raise BadRequest(f"{name!r} is required")
            return None
        v = body[name]
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise BadRequest(f"{name!r} must be an integer, got {v!r}")
        if kind is not int and not isinstance(v, kind):
            raise BadRequest(f"{name!r} must be a {kind.__name__}, got {v!r}")
        return v
    if path == "/api/mark":
        outcome = field("outcome", str)
        if outcome not in OUTCOMES:
            raise BadRequest(f"'outcome' must be one of {OUTCOMES}, got {outcome!r}")
        episode = field("episode_id", str, required=False) or ""
        if len(episode) > 64:
            raise BadRequest("'episode_id' is too long")
        return ("mark", episode, outcome)
    if path == "/api/ready":
        return ("ready",)
    if path == "/api/pause":
        return ("pause", field("paused", bool))
    if path == "/api/rollback":
        version = field("version", int)
        if not 0 <= version < 2**31:
            raise BadRequest(f"'version' must lie in [0, 2^31), got {version}")
        return ("rollback", version)
    if path == "/api/intervene":
        return ("intervene", field("on", bool))
    raise LookupError(path)


class _Handler(BaseHTTPRequestHandler):
    panel: PanelServer
    timeout = TIMEOUT_S                                # per-connection socket timeout

    def log_message(self, fmt, *args) -> None:       # keep the node's log for the node
        pass

    def _cookie_token(self) -> str:
        for part in (self.headers.get("Cookie") or "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == "panel_token":
                return v
        return ""

    def _refusal(self, state_changing: bool) -> tuple[int, str] | None:
        """(code, why) when this request may not be served, else None."""
        host = self.headers.get("Host") or ""
        if not self.panel.host_ok(host):
            return 421, f"Host {self.headers.get('Host')!r} is not this panel's address"
        if self.panel.token:
            given = self.headers.get("X-Panel-Token") or self._cookie_token() or (
                parse_qs(urlparse(self.path).query).get("token", [""])[0]
                if urlparse(self.path).path == "/" else "")
            if not hmac.compare_digest(given.encode(), self.panel.token.encode()):
                return 401, "missing or wrong panel token"
        if state_changing:
            origin = self.headers.get("Origin")
            if origin is not None and urlparse(origin).netloc != host:
                return 403, f"requests from {origin} are refused"
            if not hmac.compare_digest((self.headers.get("X-CSRF-Token") or "").encode(),
                                       self.panel.csrf.encode()):
                return 403, "missing or wrong X-CSRF-Token: only the panel's page may act"
            if (self.headers.get("Content-Type") or "").split(";")[0] != "application/json":
                return 415, "the body must be application/json"
        return None

    def _send(self, code: int, body: bytes, ctype: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj).encode())

    def do_GET(self) -> None:
        refused = self._refusal(state_changing=False)
        if refused:
            return self._json(refused[0], {"error": refused[1]})
        path = urlparse(self.path).path
        if path == "/":
            page = PAGE.replace("@@CSRF@@", self.panel.csrf).encode()
            cookie = {}
            if self.panel.token:                       # the token moves into a cookie
                cookie = {"Set-Cookie": f"panel_token={self.panel.token}; HttpOnly; "
                          "SameSite=Strict; Path=/"}
            return self._send(200, page, "text/html; charset=utf-8", cookie)
        if path == "/api/state":
            return self._json(200, self.panel.backend.snapshot())
        if path == "/api/thumbnail.jpg":
            jpeg = self.panel.backend.thumbnail_jpeg()
            return self._send(200, jpeg, "image/jpeg") if jpeg else self._json(404, {
                "error": "no camera image yet"})
        self._json(404, {"error": f"no such page {path}"})

    def do_POST(self) -> None:
        refused = self._refusal(state_changing=True)
        if refused:
            return self._json(refused[0], {"accepted": False, "message": refused[1]})
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._json(411, {"accepted": False, "message": "Content-Length required"})
        if not 0 <= n <= MAX_BODY:
            self.close_connection = True
            return self._json(413, {"accepted": False, "message":
                                    f"a body of 0..{MAX_BODY} bytes, got {n}"})
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            action = parse_action(urlparse(self.path).path, body)
        except LookupError as e:
            return self._json(404, {"accepted": False, "message": f"no such action {e}"})
        except (ValueError, RecursionError) as e:    # BadRequest, JSONDecodeError
            return self._json(400, {"accepted": False, "message": f"bad request: {e}"})
        b = self.panel.backend
        if action[0] == "mark":
            ok, msg = b.mark_episode(action[1], action[2], "panel")
        elif action[0] == "ready":
            ok, msg = b.scene_is_ready()
        elif action[0] == "pause":
            ok, msg = b.set_paused(action[1])
        elif action[0] == "intervene":
            ok, msg = b.intervene(action[1])
        else:
            ok, msg = b.rollback(action[1])
        self._json(200, {"accepted": ok, "message": msg})
