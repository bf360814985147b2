"""Helpers shared by the tests and the load benchmark: a small synthetic preference set, a server
in a background thread, and a minimal HTTP client (one keep-alive connection, cookie, CSRF token).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from PIL import Image, ImageDraw

from annotation.config import AnnotateConfig
from annotation.prefset_io import ImageSource, select_items
from annotation.server import AnnotationApp, AnnotationServer, start_in_thread
from annotation.store import Store
from core.config import config_from_dict
from core.images import encode_png
from preference_sets.io import write_preference_set
from preference_sets.schema import make_pair_row

RISKS = ("exposure", "stereotype", "association", "misalignment")
XSS_CAPTION = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> a chef at the beach'


def figure_png(index: int, side: int, size: int = 64) -> bytes:
    """A small distinct picture: background hue from the index, a figure whose torso differs by side."""
    hue = (index * 47) % 255
    image = Image.new("RGB", (size, size), (40 + hue // 3, 90 + (hue * 2) % 120, 140 + hue // 4))
    draw = ImageDraw.Draw(image)
    cx = size // 2
    draw.ellipse((cx - 7, 10, cx + 7, 24), fill=(224, 180, 150))
    draw.rectangle((cx - 10, 25, cx + 10, 44), fill=(224, 180, 150) if side else (60, 70, 160))
    draw.rectangle((cx - 9, 45, cx - 2, 58), fill=(50, 50, 60))
    draw.rectangle((cx + 2, 45, cx + 9, 58), fill=(50, 50, 60))
    return encode_png(image)


def build_set(folder: Path, n: int, captions: Optional[list[str]] = None,
              image_pairs: Optional[list[tuple[bytes, bytes]]] = None) -> Path:
    """A valid preference set of ``n`` pairs (label_0 = 1: the automatic proposal prefers image 0)."""
    rows = []
    for i in range(n):
        caption = captions[i] if captions and i < len(captions) else f"a person number {i} at the park"
        jpg_0, jpg_1 = image_pairs[i] if image_pairs and i < len(image_pairs) else (figure_png(i, 0), figure_png(i, 1))
        rows.append(make_pair_row(
            caption, jpg_0, jpg_1, 1.0, risk=RISKS[i % len(RISKS)], strategy="minimal_pair",
            seed_0=i, seed_1=i + 1000, scores_0={"exposure": 0.1}, scores_1={"exposure": 0.9},
        ))
    return write_preference_set(rows, folder, {"title": "test set", "description": "for annotation tests"})


def make_config(**overrides: Any) -> AnnotateConfig:
    return config_from_dict(AnnotateConfig, {"lease_minutes": 5, **overrides})


class LiveServer:
    """A server over ``set_folder`` in a background thread, with its store."""

    def __init__(self, set_folder: Path, db: Path, cfg: AnnotateConfig, gold: dict[str, str] | None = None):
        self.cfg = cfg
        self.store = Store(db)
        items, fingerprint = select_items(set_folder, cfg.risks, cfg.max_items, cfg.subset_seed, gold or {})
        self.store.import_items(items, fingerprint)
        self.store.set_gold(gold or {})
        images = ImageSource(set_folder, Path(db).parent / "datasets_cache")
        self.server = AnnotationServer(("127.0.0.1", 0), AnnotationApp(self.store, images, cfg))
        self.thread = start_in_thread(self.server)
        self.host, self.port = self.server.server_address[:2]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.store.close()


class Client:
    """A minimal HTTP client holding one keep-alive connection, a session cookie and the CSRF token."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.cookie: Optional[str] = None
        self.csrf: Optional[str] = None

    def request(self, method: str, path: str, body: Any = None, headers: Optional[dict] = None,
                raw: Optional[bytes] = None) -> tuple[int, Any, dict]:
        hdrs = dict(headers or {})
        if self.cookie:
            hdrs.setdefault("Cookie", self.cookie)
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
            if self.csrf:
                hdrs.setdefault("X-CSRF-Token", self.csrf)
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=hdrs)
                resp = self.conn.getresponse()
                payload = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closes a connection after refusing a body; reconnect once.
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        content_type = resp.getheader("Content-Type", "")
        parsed = json.loads(payload) if content_type.startswith("application/json") and payload else payload
        return resp.status, parsed, dict(resp.getheaders())

    def login(self, token: str) -> int:
        status, _, headers = self.request("POST", "/api/login", {"token": token})
        if status == 200:
            self.cookie = headers["Set-Cookie"].split(";")[0]
            status, data, _ = self.request("GET", "/api/session")
            self.csrf = data["csrf_token"]
        return status

    def next(self) -> Optional[dict]:
        status, data, _ = self.request("POST", "/api/next", {})
        assert status == 200, data
        return data["item"]

    def decide(self, assignment_id: str, choice: str, key: str, tags: list[str] | None = None, note: str = ""):
        return self.request("POST", "/api/decision", {"assignment_id": assignment_id, "choice": choice,
                                                        "tags": tags or [], "note": note, "idempotency_key": key})

    def close(self) -> None:
        self.conn.close()


def launch_serve(set_folder: Path, db: Path, *overrides: str, env: Optional[dict] = None, timeout: float = 120.0):
    """Run ``python -m annotation.cli serve`` on a free loopback port until it listens or exits.

    Returns (process, host, port, output): a listening server has ``host``/``port`` set and is still
    running (the caller stops it); a refused start has exited and ``host`` is None. ``env`` entries
    replace (or, when None, remove) variables of this process's environment.
    """
    env_vars = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env_vars["PYTHONPATH"] = repo + (os.pathsep + env_vars["PYTHONPATH"] if env_vars.get("PYTHONPATH") else "")
    env_vars.setdefault("HF_DATASETS_OFFLINE", "1")
    for name, value in (env or {}).items():
        if value is None:
            env_vars.pop(name, None)
        else:
            env_vars[name] = value
    proc = subprocess.Popen(
        [sys.executable, "-m", "annotation.cli", "serve", "--set", str(set_folder), "--db", str(db), "--port", "0",
         *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_vars, cwd=repo,
    )
    # A watchdog, so a server that neither listens nor exits cannot hang the caller.
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"listening on http://([\d.]+):(\d+)", line)
            if match:
                # Keep draining its output so the child never blocks on a full pipe.
                threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
                return proc, match.group(1), int(match.group(2)), "".join(lines)
        proc.wait()
    finally:
        watchdog.cancel()
    return proc, None, None, "".join(lines)


def spawn_server(set_folder: Path, db: Path, *overrides: str, timeout: float = 120.0):
    """Start ``python -m annotation.cli serve`` as a child process on a free loopback port.

    Returns (process, host, port) once it prints its address. The caller stops it (terminate/kill).
    """
    proc, host, port, output = launch_serve(set_folder, db, *overrides, timeout=timeout)
    if host is None:
        raise RuntimeError("annotation server did not start:\n" + "\n".join(output.splitlines()[-30:]))
    return proc, host, port


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started by :func:`launch_serve` (terminate, then kill if it lingers)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raw_request(host: str, port: int, data: bytes, timeout: float = 30.0) -> tuple[int, Any]:
    """Send ``data`` as-is on a fresh connection; (status, parsed JSON body) of the reply.

    For requests ``http.client`` will not send: odd headers, a body shorter than its Content-Length.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None
