"""What the project's local web servers share (the annotation tool, the guarded generation service): stdlib
``http.server`` helpers for a JSON API behind a strict Content-Security-Policy.

* :func:`is_loopback`: whether a bind address stays on this machine (servers bind loopback unless told otherwise);
* :func:`security_headers`: the headers every response carries, around a server's own CSP;
* :class:`HttpError`: an error reply (status + message) raised anywhere in a handler;
* :func:`read_body` and :func:`parse_json_object`: a request body within a size limit and a time limit, and a JSON
  object out of it, each bad input a clear 4xx.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Optional

# ASCII digits only: str.isdigit() also accepts characters such as "²" that int() then refuses.
CONTENT_LENGTH = re.compile(r"^[0-9]{1,15}$")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def security_headers(csp: str) -> dict[str, str]:
    """Headers for every response: the server's CSP, no sniffing, no framing, no referrer, same-origin only."""
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    }


class HttpError(Exception):
    def __init__(self, status: int, message: str, extra: Optional[dict] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.extra = extra or {}
        self.headers = headers or {}


def read_body(handler, max_bytes: int, timeout_seconds: float) -> bytes:
    """The body of ``handler``'s request (a ``BaseHTTPRequestHandler``), at most ``max_bytes``: a missing or
    malformed ``Content-Length`` or a chunked body is refused unread; a body that stops arriving for
    ``timeout_seconds`` (the handler's socket timeout) is 408."""
    length_text = handler.headers.get("Content-Length")
    if handler.headers.get("Transfer-Encoding"):
        raise HttpError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send Content-Length")
    if length_text is None:
        raise HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length header is required")
    if not CONTENT_LENGTH.match(length_text.strip()):
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"Content-Length must be a number of bytes in ASCII digits, got {length_text!r}")
    length = int(length_text)
    if length > max_bytes:
        raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes is over the limit of {max_bytes}")
    try:
        body = handler.rfile.read(length)
    except TimeoutError as exc:
        raise HttpError(HTTPStatus.REQUEST_TIMEOUT,
                        f"the body stopped arriving: Content-Length announced {length} bytes and nothing more "
                        f"came for {timeout_seconds:g} s") from exc
    if len(body) < length:  # the client closed its side early
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"the body ended after {len(body)} of the {length} bytes Content-Length announced")
    return body


def parse_json_object(body: bytes, content_type: str) -> dict:
    """The JSON object in ``body``; a content type other than application/json is 415, anything but a readable
    JSON object 400."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"malformed JSON body: {exc}") from exc
    except RecursionError as exc:
        raise HttpError(HTTPStatus.BAD_REQUEST, "JSON body is nested too deeply") from exc
    except ValueError as exc:  # an integer beyond Python's digit limit for int()
        raise HttpError(HTTPStatus.BAD_REQUEST, "JSON body holds a number too long to read") from exc
    if not isinstance(data, dict):
        raise HttpError(HTTPStatus.BAD_REQUEST, "JSON body must be an object")
    return data


class JsonRequestHandler(BaseHTTPRequestHandler):
    """What the project's local servers share: responses with the server's security headers and no caching by
    default, JSON bodies, and request logging at debug level. A server's handler sets ``security_headers_map`` (from
    :func:`security_headers` with its own CSP) and ``logger``."""

    security_headers_map: dict[str, str] = {}
    logger = logging.getLogger(__name__)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        self.logger.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str, headers: Optional[dict] = None,
              cache: str = "no-store") -> None:
        self.send_response(status)
        for name, value in self.security_headers_map.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", cache)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: Optional[dict] = None) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json; charset=utf-8", headers)
