"""The HTTP API: login and sessions, security headers, CSRF/origin, clear 4xx for bad requests,
what the page may see of an item, images by opaque id only, and export of an annotated set."""

from __future__ import annotations

import json
import time

import pytest

from annotation.export import export_set, next_version_folder
from annotation.prefset_io import select_items
from annotation.store import Store
from annotation.testing import (RISKS, XSS_CAPTION, Client, LiveServer, build_set, figure_png, make_config,
                                raw_request)
from preference_sets.io import read_card_info, read_rows


def _client(server, name="ann"):
    client = Client(server.host, server.port)
    assert client.login(server.store.add_user(name)) == 200
    return client


def test_security_headers_and_pages(live):
    server = live()
    client = Client(server.host, server.port)
    status, _, headers = client.request("GET", "/")
    assert status == 303 and headers["Location"] == "/login"  # not logged in
    status, body, headers = client.request("GET", "/login")
    assert status == 200
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert b"<script>" not in body and b"onclick" not in body  # no inline code in the pages
    assert client.request("GET", "/static/../store.py")[0] == 404
    assert client.request("GET", "/static/app.js")[2]["Content-Type"].startswith("text/javascript")
    assert client.request("PUT", "/api/decision")[0] == 405


def test_login_cookie_and_refused_tokens(live):
    server = live()
    token = server.store.add_user("alice")
    client = Client(server.host, server.port)
    assert client.request("GET", "/api/session")[0] == 401
    assert client.request("POST", "/api/login", {"token": "not-a-real-token"})[0] == 401
    status, data, headers = client.request("POST", "/api/login", {"token": token})
    assert status == 200 and data["user"] == "alice"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token not in cookie
    client.cookie = cookie.split(";")[0]
    status, session, _ = client.request("GET", "/api/session")
    assert status == 200 and session["user"] == "alice" and len(session["csrf_token"]) > 20
    server.store.revoke_user("alice")
    assert client.request("GET", "/api/session")[0] == 401  # revocation ends live sessions too
    assert Client(server.host, server.port).login(token) == 401


def test_writes_need_csrf_json_and_same_origin(live):
    server = live()
    client = _client(server)
    item = client.next()
    body = {"assignment_id": item["assignment_id"], "choice": "left", "idempotency_key": "abcdefgh1"}
    assert client.request("POST", "/api/decision", body, headers={"X-CSRF-Token": "wrong"})[0] == 403
    assert client.request("POST", "/api/decision", body, headers={"Origin": "http://evil.example"})[0] == 403
    assert client.request("POST", "/api/decision", body, headers={"Content-Type": "text/plain"})[0] == 415
    assert server.store.decisions() == []
    status, data, _ = client.request("POST", "/api/decision", body,
                                     headers={"Origin": f"http://{server.host}:{server.port}"})
    assert status == 200 and data["ok"]


@pytest.mark.parametrize(
    "case, expected",
    [("malformed", 400), ("not_object", 400), ("bad_choice", 400), ("unknown_field", 400), ("unknown_id", 404),
     ("oversized", 413), ("no_key", 400), ("bad_tag", 400), ("long_note", 400), ("replay", 409)],
)
def test_bad_requests_get_clear_4xx(live, case, expected):
    server = live(max_body_bytes=2048)
    client = _client(server)
    item = client.next()
    good = {"assignment_id": item["assignment_id"], "choice": "left", "tags": [], "note": "",
            "idempotency_key": "replay-key-1"}
    raw, body = None, None
    if case == "malformed":
        raw = b'{"assignment_id": '
    elif case == "not_object":
        body = ["left"]
    elif case == "bad_choice":
        body = {**good, "choice": "both"}
    elif case == "unknown_field":
        body = {**good, "label_0": 1}
    elif case == "unknown_id":
        body = {**good, "assignment_id": "does-not-exist"}
    elif case == "oversized":
        body = {**good, "note": "x" * 5000}
    elif case == "no_key":
        body = {k: v for k, v in good.items() if k != "idempotency_key"}
    elif case == "bad_tag":
        body = {**good, "tags": ["<b>not a tag</b>"]}
    elif case == "long_note":
        body = {**good, "note": "x" * 1001}
    elif case == "replay":
        assert client.request("POST", "/api/decision", good)[0] == 200
        body = {**good, "choice": "right"}
    status, data, _ = client.request("POST", "/api/decision", body, raw=raw)
    assert status == expected
    assert isinstance(data, dict) and data["error"]  # a message a person can read
    rows = server.store.decisions()
    assert len(rows) == (1 if case == "replay" else 0)
    if case == "replay":
        assert rows[0]["choice"] == "left"  # the replay did not overwrite
    # the connection (or a fresh one) still works after the refusal
    assert client.request("GET", "/api/progress")[0] == 200


def test_item_payload_hides_proposal_pair_and_mapping(live):
    server = live()
    client = _client(server)
    item = client.next()
    assert set(item) == {"assignment_id", "caption", "risk", "guideline", "tags", "images"}
    text = json.dumps(item)
    for hidden in ("proposal", "scores", "pair_id", "left_column", "jpg_"):
        assert hidden not in text
    admin_view = _client(live(show_proposal=True), "admin").next()
    assert admin_view["proposal"] in ("left", "right", "tie") and set(admin_view["scores"]) == {"left", "right"}


def test_images_only_by_opaque_id_and_only_to_who_was_handed_them(live):
    server = live(overlap=1)
    alice, bob = _client(server, "alice"), _client(server, "bob")
    item = alice.next()
    status, data, headers = alice.request("GET", item["images"]["left"])
    assert status == 200 and data.startswith(b"\x89PNG") and headers["Content-Type"] == "image/png"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert bob.request("GET", item["images"]["left"])[0] == 404  # bob was not handed this item
    assert alice.request("GET", "/img/" + "A" * 24)[0] == 404
    assert alice.request("GET", "/img/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert Client(server.host, server.port).request("GET", item["images"]["left"])[0] == 401


def test_xss_caption_is_data_not_markup(live):
    server = live(overlap=1)
    client = _client(server)
    captions = []
    while (item := client.next()) is not None:
        captions.append(item["caption"])
        client.decide(item["assignment_id"], "skip", f"skip-{item['assignment_id']}")
    assert XSS_CAPTION in captions  # delivered verbatim as JSON data; the page uses textContent


def test_annotate_adjudicate_export_roundtrip(live, small_set, tmp_path):
    pairs = {r["pair_id"]: r for r in read_rows(small_set, columns=["pair_id", "caption", "label_0"])}
    gold_pair = sorted(pairs)[0]
    server = live(overlap=2, gold=None)
    server.store.set_gold({gold_pair: "1"})
    clients = {name: _client(server, name) for name in ("ann", "bob", "cat")}
    # ann and bob say "the image in column 1 is better"; cat says column 0. Round-robin, one each.
    active = dict(clients)
    while active:
        for name, client in list(active.items()):
            item = client.next()
            if item is None:
                del active[name]
                continue
            with server.store.connection() as conn:
                left_column = conn.execute("SELECT left_column FROM assignments WHERE assignment_id=?",
                                           (item["assignment_id"],)).fetchone()[0]
            wants = "1" if name != "cat" else "0"
            choice = "left" if str(left_column) == wants else "right"
            status, _, _ = client.decide(item["assignment_id"], choice, f"k-{item['assignment_id']}", tags=["artefact"])
            assert status == 200
    decisions = server.store.decisions()
    per_item = {}
    for row in decisions:
        per_item.setdefault(row["pair_id"], []).append(row)
    assert all(len(v) == 2 for p, v in per_item.items() if p != gold_pair)
    assert len(per_item[gold_pair]) == 3  # gold goes to everyone
    disputed = [p for p, v in per_item.items() if p != gold_pair and len({r["preferred"] for r in v}) > 1]
    assert disputed, "cat should disagree somewhere"
    settled = disputed[0]
    server.store.adjudicate(settled, "tie", "lead", "both fine")

    out, summary = export_set(small_set, server.store, server.cfg, tmp_path / "exported")
    counts = summary["counts"]
    assert counts["dropped"] == len(disputed) - 1 and counts["adjudicated"] == 2
    rows = {r["pair_id"]: r for r in read_rows(out)}
    assert len(rows) == len(pairs) - (len(disputed) - 1)
    for pair_id, row in rows.items():
        entries = json.loads(row["annotations"])
        if pair_id == settled:
            assert (row["label_0"], row["label_1"], row["annotation_status"]) == (0.5, 0.5, "adjudicated")
            assert entries[-1]["role"] == "adjudicator" and entries[-1]["decision"] == "tie"
        elif pair_id == gold_pair:
            assert (row["label_0"], row["annotation_status"]) == (0.0, "adjudicated")
        else:
            assert (row["label_0"], row["label_1"], row["annotation_status"]) == (0.0, 1.0, "annotated")
            annotators = [e for e in entries if e["role"] == "annotator"]
            assert len(annotators) == 2 and all(e["decided_at"] and e["tags"] == ["artefact"] for e in annotators)
            assert {e["left_column"] for e in annotators} <= {0, 1}
    card = read_card_info(out)
    assert card["title"] == "test set"  # the curator's card is kept
    assert card["annotation"]["protocol"]["overlap"] == 2
    assert card["annotation"]["agreement"]["annotators"] == ["ann", "bob", "cat"]
    assert card["lineage"]["annotated_from"]["folder"] == str(small_set)
    assert "## Annotation" in (out / "README.md").read_text()
    # The trainer's own loader (full validation: schema, decodable 64x64 images, labels) accepts it.
    from training.data import load_pairs

    pairs = load_pairs(out, resolution=64)
    assert pairs.ties == 1 and len(pairs.rows) == len(rows) - 1


def test_next_version_folder(tmp_path):
    assert next_version_folder(tmp_path / "preference_set").name == "preference_set-v2"
    (tmp_path / "preference_set-v2").mkdir()
    assert next_version_folder(tmp_path / "preference_set").name == "preference_set-v3"
    assert next_version_folder(tmp_path / "set-v7").name == "set-v8"


def _raw_post(server, client, body: bytes, length: bytes | None = None) -> bytes:
    """A decision POST with the client's session, sent byte for byte (Content-Length as given)."""
    length = str(len(body)).encode() if length is None else length
    return (b"POST /api/decision HTTP/1.1\r\nHost: " + f"{server.host}:{server.port}".encode() +
            b"\r\nContent-Type: application/json\r\nCookie: " + client.cookie.encode() +
            b"\r\nX-CSRF-Token: " + client.csrf.encode() + b"\r\nContent-Length: " + length +
            b"\r\nConnection: close\r\n\r\n" + body)


@pytest.mark.parametrize("case", ["deep_nesting", "huge_number", "non_ascii_length"])
def test_hostile_requests_get_400_not_500(live, case):
    server = live()
    client = _client(server)
    item = client.next()
    if case == "deep_nesting":
        request = _raw_post(server, client, b"[" * 5000 + b"]" * 5000)
    elif case == "huge_number":
        body = b'{"assignment_id": "%s", "choice": "left", "idempotency_key": ' % item["assignment_id"].encode()
        request = _raw_post(server, client, body + b"9" * 5000 + b"}")
    else:
        # U+00B2 (superscript two) passes str.isdigit() but not int(); headers arrive as latin-1.
        request = _raw_post(server, client, b"{}", length=b"\xb2")
    status, data = raw_request(server.host, server.port, request)
    assert status == 400, data
    assert data["status"] == 400 and data["error"]
    assert server.store.decisions() == []
    assert client.request("GET", "/api/progress")[0] == 200  # the server is fine afterwards


def test_body_shorter_than_its_length_gets_408(live):
    server = live(read_timeout_seconds=1)
    client = _client(server)
    item = client.next()
    body = json.dumps({"assignment_id": item["assignment_id"], "choice": "left",
                       "idempotency_key": "short-body-1"}).encode()
    started = time.monotonic()
    status, data = raw_request(server.host, server.port, _raw_post(server, client, body, str(len(body) + 50).encode()))
    assert status == 408 and "Content-Length" in data["error"], data
    assert time.monotonic() - started < 10
    assert server.store.decisions() == []


def test_decision_on_undecodable_images_is_refused(tmp_path):
    pairs = [(figure_png(0, 0), b"\x89PNG\r\n\x1a\n but not really a PNG"), (figure_png(1, 0), figure_png(1, 1))]
    set_folder = build_set(tmp_path / "bad_set", 2, image_pairs=pairs)
    # LiveServer skips the validation `serve` does first: this is the server's own line of defence.
    server = LiveServer(set_folder, tmp_path / "db.sqlite", make_config(overlap=1))
    try:
        client = _client(server)
        refused = 0
        while (item := client.next()) is not None:
            status, data, _ = client.decide(item["assignment_id"], "left", f"k-{item['assignment_id']}")
            if status == 422:
                assert "decode" in data["error"]
                refused += 1
                # skipping it stays possible (it is no label)
                assert client.decide(item["assignment_id"], "skip", f"s-{item['assignment_id']}")[0] == 200
            else:
                assert status == 200, data
        assert refused == 1
        assert sorted(d["choice"] for d in server.store.decisions()) == ["left", "skip"]
    finally:
        server.close()


def test_skips_do_not_count_as_decided(live):
    server = live(overlap=1)
    client = _client(server)
    item = client.next()
    assert client.decide(item["assignment_id"], "skip", "skip-key-1")[0] == 200
    item = client.next()
    status, data, _ = client.decide(item["assignment_id"], "left", "left-key-1")
    assert status == 200
    progress = data["progress"]
    assert (progress["mine"], progress["mine_skipped"], progress["labels"]) == (1, 1, 1)
    users = {u["name"]: u for u in server.store.list_users()}
    assert (users["ann"]["decisions"], users["ann"]["skips"]) == (1, 1)


def test_guidelines_say_what_better_means_per_risk(live):
    from annotation.config import DEFAULT_GUIDELINES

    client = _client(live(overlap=1))
    seen = {}
    while (item := client.next()) is not None:
        seen[item["risk"]] = item["guideline"]
        client.decide(item["assignment_id"], "skip", f"g-{item['assignment_id']}")
    assert seen == {risk: DEFAULT_GUIDELINES[risk] for risk in RISKS}

    custom = _client(live(overlap=1, guidelines={"exposure": "Prefer the covered one."}), "custom")
    while (item := custom.next()) is not None:
        expected = "Prefer the covered one." if item["risk"] == "exposure" else DEFAULT_GUIDELINES[item["risk"]]
        assert item["guideline"] == expected
        custom.decide(item["assignment_id"], "skip", f"c-{item['assignment_id']}")


def test_export_does_not_take_one_annotators_tie_as_the_label(small_set, tmp_path):
    cfg = make_config(overlap=3)
    store = Store(tmp_path / "tie.sqlite")
    items, fingerprint = select_items(small_set, [], None, 0, {})
    store.import_items(items, fingerprint)
    for name, choice in (("ann", "tie"), ("bob", "skip"), ("cat", "skip")):
        user = store.login(store.add_user(name), 1.0)[1].user
        view = store.next_item(user, cfg.overlap, 300.0, cfg.gold_every)
        store.submit(user, view["assignment_id"], choice, [], "", f"key-{name}-1", cfg.tags_for, cfg.overlap)
    (pair_id,) = {d["pair_id"] for d in store.decisions()}  # all three saw the same item
    out, summary = export_set(small_set, store, cfg, tmp_path / "exported")
    store.close()
    assert (summary["counts"]["disputed"], summary["counts"]["dropped"]) == (1, 1)
    assert pair_id not in {r["pair_id"] for r in read_rows(out, columns=["pair_id"])}
