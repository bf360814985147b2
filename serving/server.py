"""The guarded generation service's HTTP server: stdlib ``ThreadingHTTPServer``, a JSON API and one page.

API:

* ``POST /api/generate`` ``{"prompt": str, "seed": int (optional)}`` with ``Authorization: Bearer <token>`` and
  ``Content-Type: application/json`` -> ``{"outcome", "image" (base64 PNG, blurred when flagged; null when the
  prompt was blocked or the image refused), "warnings", "prompt_used", "seed", "tries", "flags", ...}``;
* ``GET /api/info``: the limits the page needs (longest prompt); ``GET /healthz``; ``GET /`` the page.

Security model (docs/mitigations.md, "Guarded generation service"):

* a bearer token per client in the ``Authorization`` header, never in a URL (a request to the API with a query
  string is refused, and the request log records paths without their query); only sha256 digests of tokens are
  kept; no cookies, so a cross-site page cannot make a browser send a credential;
* a sliding-window rate limit per token (429 with ``Retry-After``) and a bounded wait for the model (503);
* a strict Content-Security-Policy (scripts and styles only from the fixed static files, images only from
  ``blob:`` URLs the page makes from the JSON reply, nothing inline), ``nosniff``, no framing, no referrer;
  warnings are placed with ``textContent`` by the page;
* bound to loopback unless ``allow_remote``; bodies over ``max_body_bytes`` refused unread;
* every request's decisions go to the decision log; a blocked prompt's text is not written there unless
  ``log_prompts: all``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlsplit

from core.errors import PipelineError
from core.images import encode_png
from core.web import HttpError, JsonRequestHandler, parse_json_object, read_body, security_headers
from mitigations.stack import GuardedGenerator, GuardRecord
from serving.config import ServeConfig
from serving.tokens import TokenTable

log = logging.getLogger("serving.server")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src blob:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = security_headers(CSP)
# The only files the server ever sends: a fixed table, never a path from the request.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
GENERATE_FIELDS = {"prompt", "seed"}
SEED_LIMIT = 2**31  # seeds a client may choose: [0, 2**31)


def _load_static() -> dict[str, bytes]:
    folder = resources.files("serving") / "static"
    return {name: (folder / name).read_bytes() for name, _ in STATIC_FILES.values()}


class RateLimiter:
    """At most ``requests`` per client in any ``window_seconds``."""

    def __init__(self, requests: int, window_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.requests, self.window, self.clock = requests, window_seconds, clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Count a request of ``client``, or raise 429 with the seconds until one is allowed again."""
        now = self.clock()
        with self._lock:
            seen = self._seen.setdefault(client, deque())
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if len(seen) >= self.requests:
                retry = max(1, int(seen[0] + self.window - now + 0.999))
                raise HttpError(HTTPStatus.TOO_MANY_REQUESTS,
                                f"rate limit: at most {self.requests} requests per {self.window:g} s per token; "
                                f"try again in {retry} s", headers={"Retry-After": str(retry)})
            seen.append(now)


class DecisionLog:
    """One JSON line per request, appended to a file readable by its owner only (it may hold prompts)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(descriptor, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, entry: dict) -> None:
        line = json.dumps(entry, ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class ServeApp:
    """Everything a request handler needs: the guarded generator, the tokens, the limits, the log."""

    def __init__(self, generator: GuardedGenerator, cfg: ServeConfig, tokens: TokenTable, decision_log: DecisionLog):
        self.generator, self.cfg, self.tokens, self.decision_log = generator, cfg, tokens, decision_log
        self.limiter = RateLimiter(cfg.rate_limit.requests, cfg.rate_limit.window_seconds)
        self.static = _load_static()
        self._model_lock = threading.Lock()  # one pipeline: one generation at a time
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    @contextlib.contextmanager
    def model_turn(self) -> Iterator[None]:
        """Wait for the model (503 when ``max_waiting`` requests already wait or run)."""
        with self._waiting_lock:
            if self._waiting >= self.cfg.max_waiting:
                raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE,
                                f"busy: {self._waiting} requests are already waiting for the model; try again shortly",
                                headers={"Retry-After": "5"})
            self._waiting += 1
        try:
            with self._model_lock:
                yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def generate(self, client: str, prompt: str, seed: int) -> dict:
        request_id = secrets.token_hex(8)
        with self.model_turn():
            image, record = self.generator.run_one(prompt, seed)
        self.record(request_id, client, record)
        return {
            "request_id": request_id,
            "outcome": record.outcome,
            "blocked": record.blocked,
            "flagged": record.flagged,
            "blurred": record.blurred,
            "refused": record.outcome == "refused",
            "image": base64.b64encode(encode_png(image)).decode("ascii") if image is not None else None,
            "image_type": "image/png" if image is not None else None,
            "warnings": list(record.warnings),
            "prompt_used": record.model_prompt,
            "seed": record.seed,
            "tries": record.tries_used,
            "flags": list(record.flags_seen),
            "latency_ms": {k: round(v, 1) for k, v in record.latency_ms.items()},
        }

    def record(self, request_id: str, client: str, record: GuardRecord) -> None:
        """The request's decisions into the decision log, and a line without any prompt text into the server log."""
        policy = self.cfg.log_prompts
        with_text = policy == "all" or (policy == "allowed" and not record.blocked)
        entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                 "request_id": request_id, "client": client, **record.to_log(prompt_text=with_text)}
        entry.pop("index")  # always 0: one prompt per request
        self.decision_log.write(entry)
        log.info("request %s from %s: %s (filter: %s), %d tries, %.0f ms", request_id, client, record.outcome,
                 entry["filter"]["reason"] if entry["filter"] else "off", record.tries_used,
                 record.latency_ms.get("total", 0.0))


class Handler(JsonRequestHandler):

    security_headers_map = SECURITY_HEADERS
    logger = log
    server_version = "guarded-generation/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive; every response sets Content-Length

    @property
    def app(self) -> ServeApp:
        return self.server.app  # type: ignore[attr-defined]

    def setup(self) -> None:
        self.timeout = self.app.cfg.read_timeout_seconds  # no slow-loris: the socket timeout while reading
        super().setup()

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # The path only: a query string is never logged, whatever a client put in it.
        path = urlsplit(getattr(self, "path", "") or "").path
        log.debug("%s %s %s %s", self.address_string(), getattr(self, "command", "-"), path, code)

    # --- responses ---
    def _error(self, status: int, message: str, extra: Optional[dict] = None, headers: Optional[dict] = None) -> None:
        if self.command == "POST" and not self._body_read:
            self.close_connection = True  # an unread body would be parsed as the next request
        self._json(status, {"error": message, "status": int(status), **(extra or {})}, headers)

    def _dispatch(self, fn: Callable[[], None]) -> None:
        self._body_read = False
        try:
            fn()
        except HttpError as exc:
            self._error(exc.status, str(exc), exc.extra, exc.headers)
        except PipelineError as exc:
            log.error("request failed: %s", exc)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "generation failed (see the server log)")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - never leak a traceback to the client; log it here
            log.exception("unhandled error on %s %s", self.command, urlsplit(self.path).path)
            self.close_connection = True
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server log)")

    # --- GET ---
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(self._get)

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._json(200, {"ok": True})
        elif path == "/api/info":
            self._json(200, {"max_prompt_chars": self.app.cfg.max_prompt_chars})
        elif path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            self._send(200, self.app.static[name], content_type, cache="no-cache")
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    # --- POST ---
    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._post)

    def _post(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/api/generate":
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint: {parts.path}")
        if parts.query:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the API takes no query parameters; send the token in the "
                            "Authorization header and the prompt in the JSON body")
        self._check_origin()
        client = self._client()
        self.app.limiter.check(client)
        cfg = self.app.cfg
        body = read_body(self, cfg.max_body_bytes, cfg.read_timeout_seconds)
        self._body_read = True
        data = parse_json_object(body, self.headers.get("Content-Type", ""))
        prompt, seed = self._generate_request(data)
        self._json(200, self.app.generate(client, prompt, seed))

    def _check_origin(self) -> None:
        """Browsers send Origin on POST; it must be this server. Non-browser clients send none."""
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host", ""):
            raise HttpError(HTTPStatus.FORBIDDEN, f"cross-origin request refused (Origin {origin!r})")
        if self.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
            raise HttpError(HTTPStatus.FORBIDDEN, "cross-site request refused")

    def _client(self) -> str:
        """The client named by the bearer token; 401 without a token or with an unknown one."""
        challenge = {"WWW-Authenticate": 'Bearer realm="guarded-generation"'}
        scheme, _, token = (self.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(HTTPStatus.UNAUTHORIZED, "send your token as 'Authorization: Bearer <token>'",
                            headers=challenge)
        client = self.app.tokens.identify(token.strip())
        if client is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "unknown token", headers=challenge)
        return client

    def _generate_request(self, data: dict) -> tuple[str, int]:
        unknown = sorted(set(data) - GENERATE_FIELDS)
        if unknown:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown field(s) {unknown}; allowed: {sorted(GENERATE_FIELDS)}")
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise HttpError(HTTPStatus.BAD_REQUEST, "prompt (a string) is required")
        if not prompt.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST, "prompt is empty")
        limit = self.app.cfg.max_prompt_chars
        if len(prompt) > limit:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"prompt of {len(prompt)} characters is over the limit of {limit}")
        seed = data.get("seed")
        if seed is None:
            seed = secrets.randbelow(SEED_LIMIT)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"seed must be an integer in [0, {SEED_LIMIT}), got {seed!r}")
        return prompt, seed

    # Anything else is refused plainly.
    def do_PUT(self) -> None:  # noqa: N802
        self._body_read = False
        self.close_connection = True
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")

    do_DELETE = do_PATCH = do_PUT  # noqa: N815


class ServeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: ServeApp):
        super().__init__(address, Handler)
        self.app = app

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def start_in_thread(server: ServeServer) -> threading.Thread:
    """Serve in a background thread (tests, benchmarks); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return thread


def announce(server: ServeServer, out=sys.stdout) -> None:
    print(f"guarded generation service listening on {server.url}", file=out, flush=True)
