"""The annotation web server: stdlib ``ThreadingHTTPServer``, a JSON API and a static page.

Security model (docs/annotation.md):

* login: POST /api/login {"token"} -> an HttpOnly, SameSite=Strict session cookie; the token never
  appears in a URL and only its sha256 is stored; unknown or revoked tokens get 401;
* every POST needs ``Content-Type: application/json`` (so a cross-site form cannot post), a matching
  ``Origin`` when the browser sends one, a body under ``max_body_bytes`` and, once logged in, the
  session's CSRF token in ``X-CSRF-Token``; every write carries an ``idempotency_key`` and a replayed
  key gets 409;
* a strict Content-Security-Policy (scripts and styles only from our own static files, no inline code),
  ``nosniff``, no framing, no referrer; captions are placed with ``textContent`` by the page;
* images are served by random opaque ids, only to users who were handed that item; no request path
  ever reaches the file system (static files are a fixed table).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import sys
import threading
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from annotation.config import CHOICES, AnnotateConfig
from annotation.prefset_io import ImageSource
from annotation.store import BadRequest, NotFound, Replay, Session, Store, StoreError
from core.errors import DataError
from core.web import HttpError, JsonRequestHandler, parse_json_object, read_body, security_headers

log = logging.getLogger("annotation.server")

SESSION_COOKIE = "annotate_session"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = security_headers(CSP)
# The only files the server ever sends from disk: a fixed table, never a path from the request.
STATIC_FILES = {
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/login.js": ("login.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
PAGES = {"/": "app.html", "/login": "login.html"}
IMAGE_PATH = re.compile(r"^/img/([A-Za-z0-9_-]{16,64})$")
DECISION_FIELDS = {"assignment_id", "choice", "tags", "note", "idempotency_key"}


def _load_static() -> dict[str, bytes]:
    folder = resources.files("annotation") / "static"
    names = {name for name, _ in STATIC_FILES.values()} | set(PAGES.values())
    return {name: (folder / name).read_bytes() for name in names}


class AnnotationApp:
    """Everything a request handler needs: the store, the images, the config."""

    def __init__(self, store: Store, images: ImageSource, cfg: AnnotateConfig):
        self.store = store
        self.images = images
        self.cfg = cfg
        self.static = _load_static()
        self.lease_seconds = cfg.lease_minutes * 60.0

    def item_payload(self, view: Optional[dict]) -> Optional[dict]:
        """What the page may see of an item: no pair_id, no column mapping, no proposal by default."""
        if view is None:
            return None
        payload = {
            "assignment_id": view["assignment_id"],
            "caption": view["caption"],
            "risk": view["risk"],
            "guideline": self.cfg.guideline_for(view["risk"]),
            "tags": self.cfg.tags_for(view["risk"]),
            "images": {"left": f"/img/{view['image_left']}", "right": f"/img/{view['image_right']}"},
        }
        if self.cfg.show_proposal:  # admin setting; anchors annotators, so off by default
            proposal = view["proposal"]
            side = {str(view["left_column"]): "left", str(1 - view["left_column"]): "right"}.get(proposal, proposal)
            payload["proposal"] = side
            payload["scores"] = {"left": _json_or_none(view["scores_left"]), "right": _json_or_none(view["scores_right"])}
        return payload


def _json_or_none(text: Optional[str]) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


class Handler(JsonRequestHandler):

    security_headers_map = SECURITY_HEADERS
    logger = log
    server_version = "annotate/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive; every response sets Content-Length

    @property
    def app(self) -> AnnotationApp:
        return self.server.app  # type: ignore[attr-defined]

    def setup(self) -> None:
        # Seconds a client may pause while sending a request (no slow-loris); the socket timeout is
        # set from this in StreamRequestHandler.setup.
        self.timeout = self.app.cfg.read_timeout_seconds
        super().setup()

    # --- responses ------------------------------------------------------------------------------
    def _error(self, status: int, message: str, extra: Optional[dict] = None) -> None:
        if self.command == "POST" and not self._body_read:
            self.close_connection = True  # an unread body would be parsed as the next request
        self._json(status, {"error": message, "status": status, **(extra or {})})

    # --- helpers --------------------------------------------------------------------------------
    def _session_id(self) -> Optional[str]:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        try:
            cookie = SimpleCookie(raw)
        except CookieError:
            return None
        morsel = cookie.get(SESSION_COOKIE)
        return morsel.value if morsel else None

    def _session(self) -> Session:
        session_id = self._session_id()
        session = self.app.store.session(session_id) if session_id else None
        if session is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "not logged in (or the session/token was revoked)")
        return session

    def _check_origin(self) -> None:
        """Browsers send Origin on POST; it must be this server. Non-browser clients send none."""
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host", ""):
            raise HttpError(HTTPStatus.FORBIDDEN, f"cross-origin request refused (Origin {origin!r})")
        if self.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
            raise HttpError(HTTPStatus.FORBIDDEN, "cross-site request refused")

    def _read_body(self) -> bytes:
        """The request body, within the size limit (refused unread: the connection is then closed)."""
        body = read_body(self, self.app.cfg.max_body_bytes, self.app.cfg.read_timeout_seconds)
        self._body_read = True
        return body

    def _parse_json(self, body: bytes) -> dict:
        return parse_json_object(body, self.headers.get("Content-Type", ""))

    def _check_csrf(self, session: Session) -> None:
        sent = self.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
            raise HttpError(HTTPStatus.FORBIDDEN, "missing or wrong CSRF token (X-CSRF-Token header)")

    def _dispatch(self, fn: Callable[[], None]) -> None:
        self._body_read = False
        try:
            fn()
        except HttpError as exc:
            self._error(exc.status, str(exc), exc.extra)
        except Replay as exc:
            self._error(exc.status, str(exc), {"original": exc.original})
        except StoreError as exc:
            self._error(exc.status, str(exc))
        except DataError as exc:
            log.error("data error: %s", exc)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - never leak a traceback to the client; log it here
            log.exception("unhandled error on %s %s", self.command, self.path)
            self.close_connection = True
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server log)")

    # --- GET ------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(self._get)

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._json(200, {"ok": True})
        elif path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            self._send(200, self.app.static[name], content_type, cache="no-cache")
        elif path == "/":
            session_id = self._session_id()
            if not (session_id and self.app.store.session(session_id)):
                self._send(303, b"", "text/plain", {"Location": "/login"})
                return
            self._send(200, self.app.static[PAGES[path]], "text/html; charset=utf-8")
        elif path == "/login":
            self._send(200, self.app.static[PAGES[path]], "text/html; charset=utf-8")
        elif path == "/api/session":
            session = self._session()
            cfg = self.app.cfg
            self._json(200, {
                "user": session.user.name, "role": session.user.role, "csrf_token": session.csrf_token,
                "break_every": cfg.break_every, "note_max_chars": cfg.note_max_chars,
                "show_proposal": cfg.show_proposal,
            })
        elif path == "/api/progress":
            session = self._session()
            self._json(200, self.app.store.progress(session.user, self.app.cfg.overlap))
        elif IMAGE_PATH.match(path):
            session = self._session()
            ref = self.app.store.image_ref(IMAGE_PATH.match(path).group(1), session.user)
            if ref is None:
                raise HttpError(HTTPStatus.NOT_FOUND, "unknown image id")
            data, content_type = self.app.images.get(*ref)
            self._send(200, data, content_type, cache="private, max-age=3600")
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    # --- POST -----------------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._post)

    def _post(self) -> None:
        path = urlsplit(self.path).path
        routes = {"/api/login": None, "/api/logout": self._logout, "/api/next": self._next,
                  "/api/decision": self._decision, "/api/undo": self._undo}
        if path not in routes:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
        body = self._read_body()
        self._check_origin()
        data = self._parse_json(body)
        if path == "/api/login":
            self._login(data)
            return
        session = self._session()
        self._check_csrf(session)
        routes[path](session, data)

    def _login(self, data: dict) -> None:
        token = data.get("token")
        try:
            session_id, session = self.app.store.login(token, self.app.cfg.session_hours)
        except NotFound as exc:
            raise HttpError(HTTPStatus.UNAUTHORIZED, str(exc)) from exc
        max_age = int(self.app.cfg.session_hours * 3600)
        cookie = f"{SESSION_COOKIE}={session_id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}"
        self._json(200, {"ok": True, "user": session.user.name}, {"Set-Cookie": cookie})

    def _logout(self, session: Session, data: dict) -> None:
        self.app.store.logout(self._session_id() or "")
        cookie = f"{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        self._json(200, {"ok": True}, {"Set-Cookie": cookie})

    def _next(self, session: Session, data: dict) -> None:
        cfg = self.app.cfg
        view = self.app.store.next_item(session.user, cfg.overlap, self.app.lease_seconds, cfg.gold_every)
        self._json(200, {"item": self.app.item_payload(view), "progress": self.app.store.progress(session.user, cfg.overlap)})

    def _decision(self, session: Session, data: dict) -> None:
        cfg = self.app.cfg
        unknown = sorted(set(data) - DECISION_FIELDS)
        if unknown:
            raise BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(DECISION_FIELDS)}")
        choice, tags, note = data.get("choice"), data.get("tags", []), data.get("note", "")
        if choice not in CHOICES:
            raise BadRequest(f"choice must be one of {list(CHOICES)}, got {choice!r}")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags) or len(tags) > 9:
            raise BadRequest("tags must be a list of at most 9 strings")
        if not isinstance(note, str) or len(note) > cfg.note_max_chars:
            raise BadRequest(f"note must be a string of at most {cfg.note_max_chars} characters")
        if not isinstance(data.get("assignment_id"), str):
            raise BadRequest("assignment_id (string) is required")
        row_index = self.app.store.assignment_row(data["assignment_id"], session.user)
        # A label is only worth something if both images could be seen; skipping stays possible.
        if choice != "skip" and row_index is not None and not self.app.images.decodable(row_index):
            raise HttpError(HTTPStatus.UNPROCESSABLE_ENTITY, "the images of this item cannot be decoded, so it "
                            "cannot be judged; skip it (nothing was saved)")
        result = self.app.store.submit(
            session.user, data["assignment_id"], choice, sorted(set(tags)), note.strip(), data.get("idempotency_key"),
            cfg.tags_for, cfg.overlap,
        )
        self._json(200, {**result, "progress": self.app.store.progress(session.user, cfg.overlap)})

    def _undo(self, session: Session, data: dict) -> None:
        result = self.app.store.undo(session.user, data.get("idempotency_key"), self.app.lease_seconds)
        self._json(200, result)

    # Anything else is refused plainly.
    def do_PUT(self) -> None:  # noqa: N802
        self.close_connection = True
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")

    do_DELETE = do_PATCH = do_PUT  # noqa: N815


class AnnotationServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # many annotators may connect at once (load test: 20+)

    def __init__(self, address: tuple[str, int], app: AnnotationApp):
        super().__init__(address, Handler)
        self.app = app

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def start_in_thread(server: AnnotationServer) -> threading.Thread:
    """Serve in a background thread (tests, benchmarks); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return thread


def announce(server: AnnotationServer, out=sys.stdout) -> None:
    print(f"annotation server listening on {server.url}", file=out, flush=True)
