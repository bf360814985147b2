"""The guarded generation service's API on the tiny model: generation with warnings, blur, the filter's decision in
the decision log (a blocked prompt's text left out), token auth, the per-token rate limit, loopback binding, the
security headers, and every kind of bad input refused with a clear status and message."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import stat
import threading
import time

import pytest
from PIL import Image

from core.config import config_from_dict
from core.errors import ConfigError
from serving.config import ServeConfig
from serving.server import CSP, RateLimiter
from serving.tokens import TokenTable, add_token, load_tokens, parse_entries
from tests.serving.conftest import TOKENS


def png(payload: dict) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(payload["image"])))
    assert image.format == "PNG"
    return image


def test_a_prompt_gives_an_image_and_the_decisions(live):
    server = live()
    status, headers, reply = server.generate("a dog at the beach", seed=7)
    assert status == 200
    assert reply["outcome"] == "clean" and reply["seed"] == 7 and reply["tries"] == 1 and not reply["blurred"]
    assert png(reply).size == (32, 32) and reply["image_type"] == "image/png"
    assert reply["prompt_used"] == "a dog at the beach, wearing a suit"
    assert reply["warnings"] == ["The prompt was rewritten before generation: 'a dog at the beach, wearing a suit' "
                                 "(beach)."]
    assert {"filter", "rewrite", "generate", "output_check", "total"} <= set(reply["latency_ms"])
    assert headers["Content-Security-Policy"] == CSP and headers["Cache-Control"] == "no-store"
    status, _, again = server.generate("a dog at the beach", seed=7)
    assert again["image"] == reply["image"]  # same prompt and seed, same image
    _, _, unseeded = server.generate("a dog", seed=None)
    assert 0 <= unseeded["seed"] < 2**31


def test_a_flagged_image_is_regenerated_then_blurred(live):
    server = live()
    server.scorer.flag_next = 1
    _, _, reply = server.generate("a dog", seed=3)
    assert reply["outcome"] == "regenerated" and reply["tries"] == 2 and reply["flags"] == ["nudity"]
    server.scorer.flag_next = 2
    _, _, blurred = server.generate("a dog", seed=3)
    assert blurred["outcome"] == "blurred" and blurred["blurred"] and blurred["flagged"]
    assert "blurred" in blurred["warnings"][-1] and png(blurred).size == (32, 32)
    assert blurred["image"] != reply["image"]


def test_the_filter_decision_is_logged_and_a_blocked_prompt_is_not(live):
    server = live()
    status, _, reply = server.generate("a n.u.d.e person", seed=1)
    assert status == 200 and reply["outcome"] == "blocked" and reply["blocked"]
    assert reply["image"] is None and reply["prompt_used"] is None and reply["tries"] == 0
    assert "prompt filter blocked it (explicit)" in reply["warnings"][0]
    server.generate("a dog in a park", seed=1)
    blocked, allowed = server.log_entries()
    assert blocked["client"] == "alice" and blocked["outcome"] == "blocked" and blocked["prompt"] is None
    assert blocked["filter"]["matches"] == [{"rule": "blocklist", "category": "explicit", "term": "nude", "start": 2,
                                             "end": 9}]
    assert "n.u.d.e" not in server.log_path.read_text()
    assert allowed["prompt"] == "a dog in a park" and allowed["filter"]["reason"] == "allowed"
    assert stat.S_IMODE(os.stat(server.log_path).st_mode) == 0o600
    for token in TOKENS.values():
        assert token not in server.log_path.read_text()


def test_log_prompts_all_and_none(live):
    everything = live(log_prompts="all")
    everything.generate("a n.u.d.e person")
    assert everything.log_entries()[0]["prompt"] == "a n.u.d.e person"
    nothing = live(log_prompts="none")
    nothing.generate("a dog in a park")
    entry = nothing.log_entries()[0]
    assert entry["prompt"] is None and entry["rewrite"] == {"applied": False, "rules": []}
    assert "dog" not in nothing.log_path.read_text()


@pytest.mark.parametrize("token, message", [
    (None, "send your token as 'Authorization: Bearer <token>'"),
    ("not-a-token-of-anyone", "unknown token"),
    ("", "send your token"),
])
def test_a_missing_or_wrong_token_is_401(live, token, message):
    server = live()
    status, headers, reply = server.generate("a dog", token=token)
    assert status == 401 and message in reply["error"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert server.log_path.read_text() == ""  # nothing generated, nothing logged


def test_a_token_in_the_url_is_refused_and_never_logged(live, caplog):
    server = live()
    caplog.set_level(logging.DEBUG, logger="serving.server")
    status, _, reply = server.request("POST", f"/api/generate?token={TOKENS['alice']}", {"prompt": "a dog"})
    assert status == 400 and "no query parameters" in reply["error"]
    server.request("GET", f"/?token={TOKENS['bob']}", token=None)
    assert caplog.records  # the requests were logged, by path
    assert all(token not in record.getMessage() for record in caplog.records for token in TOKENS.values())


def test_the_rate_limit_is_per_token(live):
    server = live(rate_limit={"requests": 2, "window_seconds": 60})
    assert server.generate("a dog", token="alice")[0] == 200
    assert server.generate("a nude dog", token="alice")[0] == 200  # blocked prompts count too
    status, headers, reply = server.generate("a dog", token="alice")
    assert status == 429 and "at most 2 requests per 60 s" in reply["error"]
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert server.generate("a dog", token="bob")[0] == 200


def test_the_rate_limit_window_slides():
    now = [0.0]
    limiter = RateLimiter(2, 10.0, clock=lambda: now[0])
    limiter.check("a")
    now[0] = 4.0
    limiter.check("a")
    now[0] = 9.0
    with pytest.raises(Exception, match="try again in 1 s"):
        limiter.check("a")
    now[0] = 10.5  # the first request left the window
    limiter.check("a")


@pytest.mark.parametrize("body, content_type, status, message", [
    ({"prompt": ""}, "application/json", 400, "prompt is empty"),
    ({"prompt": "   \n"}, "application/json", 400, "prompt is empty"),
    ({"prompt": "a" * 301}, "application/json", 400, "prompt of 301 characters is over the limit of 300"),
    ({}, "application/json", 400, "prompt (a string) is required"),
    ({"prompt": ["a dog"]}, "application/json", 400, "prompt (a string) is required"),
    ({"prompt": "a dog", "steps": 50}, "application/json", 400, "unknown field(s) ['steps']"),
    ({"prompt": "a dog", "seed": -1}, "application/json", 400, "seed must be an integer in [0, 2147483648)"),
    ({"prompt": "a dog", "seed": True}, "application/json", 400, "seed must be an integer"),
    ({"prompt": "a dog", "seed": "7"}, "application/json", 400, "seed must be an integer"),
    (b'{"prompt": "a dog"', "application/json", 400, "malformed JSON body"),
    (b"\xff\xfe", "application/json", 400, "malformed JSON body"),
    (b'["a dog"]', "application/json", 400, "JSON body must be an object"),
    (b"[" * 4000 + b"]" * 4000, "application/json", 400, "nested too deeply"),
    (b'{"prompt": "' + b"a" * 9000 + b'"}', "application/json", 413, "over the limit of 8192"),
    (b'{"prompt": "a dog"}', "text/plain", 415, "Content-Type must be application/json"),
    (b"prompt=a+dog", "application/x-www-form-urlencoded", 415, "Content-Type must be application/json"),
])
def test_bad_input_is_refused_clearly(live, body, content_type, status, message):
    server = live(max_prompt_chars=300)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    got, _, reply = server.request("POST", "/api/generate", body, headers={"Content-Type": content_type})
    assert got == status and message in reply["error"]
    assert server.log_path.read_text() == ""


def test_other_methods_paths_and_cross_origin_posts_are_refused(live):
    server = live()
    assert server.request("GET", "/etc/passwd", token=None)[0] == 404
    assert server.request("GET", "/static/../serving/server.py", token=None)[0] == 404
    assert server.request("POST", "/api/other", {"prompt": "a dog"})[0] == 404
    assert server.request("PUT", "/api/generate", {"prompt": "a dog"})[0] == 405
    status, _, reply = server.generate("a dog", headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in reply["error"]
    assert server.generate("a dog", headers={"Sec-Fetch-Site": "cross-site"})[0] == 403


def test_the_page_and_its_files_carry_the_security_headers(live):
    server = live()
    for path, kind in [("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/app.css", "text/css")]:
        status, headers, body = server.request("GET", path, token=None)
        assert status == 200 and headers["Content-Type"].startswith(kind)
        assert headers["Content-Security-Policy"] == CSP
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
    assert "script-src 'self'" in CSP and "img-src blob:" in CSP and "unsafe-inline" not in CSP
    page = server.request("GET", "/", token=None)[2].decode()
    assert "<script>" not in page and "style=" not in page  # nothing inline: the CSP would block it
    assert server.request("GET", "/api/info", token=None)[2] == {"max_prompt_chars": 500}


def test_requests_wait_for_the_model_up_to_max_waiting(live):
    server = live(max_waiting=1)
    results = []
    with server.app._model_lock:  # the model is busy
        waiting = threading.Thread(target=lambda: results.append(server.generate("a dog")[0]))
        waiting.start()
        for _ in range(100):
            if server.app._waiting == 1:
                break
            time.sleep(0.05)
        status, headers, reply = server.generate("a dog", token="bob")
        assert status == 503 and headers["Retry-After"] == "5" and "busy" in reply["error"]
    waiting.join(60)
    assert results == [200]


def test_a_body_that_never_arrives_times_out(live):
    server = live(read_timeout_seconds=0.5)
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall("POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {TOKENS['alice']}\r\nContent-Length: 50\r\n\r\n{{".encode())
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408")


def test_only_loopback_unless_allowed():
    base = {"model": "m", "stack": {"prompt_filter": {"enabled": False}, "rewrite": {"enabled": False},
                                    "output_check": {"enabled": False}}}
    with pytest.raises(ConfigError, match=r"serve.host '0.0.0.0' is not a loopback address.*allow_remote=true"):
        config_from_dict(ServeConfig, {**base, "host": "0.0.0.0"})
    assert config_from_dict(ServeConfig, {**base, "host": "0.0.0.0", "allow_remote": True}).allow_remote
    for host in ("127.0.0.1", "::1", "localhost"):
        assert config_from_dict(ServeConfig, {**base, "host": host}).host == host
    with pytest.raises(ConfigError, match=r"required key\(s\) missing: \['model'\]"):
        config_from_dict(ServeConfig, {}, where="serve")
    with pytest.raises(ConfigError, match="fast_paths=true"):
        config_from_dict(ServeConfig, {**base, "generation": {"fast_paths": True}})


def test_tokens_from_a_file_and_the_environment(tmp_path):
    path = tmp_path / "tokens.txt"
    token = add_token(path, "alice")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(token) >= 40
    table = load_tokens(path, "TOKENS_VAR", {"TOKENS_VAR": "bob:bob-token-0123456789, carol:carol-token-0123456789"})
    assert table.names == ["alice", "bob", "carol"]
    assert table.identify(token) == "alice" and table.identify("bob-token-0123456789") == "bob"
    assert table.identify("alice") is None and table.identify(None) is None
    with pytest.raises(ConfigError, match="already has a token for 'alice'"):
        add_token(path, "alice")
    with pytest.raises(ConfigError, match=r"no client tokens.*python -m serving.tokens add"):
        load_tokens(None, "TOKENS_VAR", {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokens(tmp_path / "missing.txt", "TOKENS_VAR", {})
    with pytest.raises(ConfigError, match=r"entry 2 \(bob\): a token is 16 to 256 characters"):
        parse_entries("alice:alice-token-0123456789\nbob:short", "file")
    with pytest.raises(ConfigError, match="entry 1: write NAME:TOKEN") as error:
        parse_entries("just-a-token-without-a-name", "file")
    assert "just-a-token" not in str(error.value)  # an error never repeats a token
    with pytest.raises(ConfigError, match="the name 'a' appears twice"):
        parse_entries("a:0123456789abcdef\na:0123456789abcdeg", "file")
    with pytest.raises(ConfigError, match="share one token"):
        TokenTable({"a": "0123456789abcdef", "b": "0123456789abcdef"})
