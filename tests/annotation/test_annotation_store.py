"""The SQLite store: leases never exceed N, random but recorded mapping, replace-on-resubmit, undo,
replay refusal, revocation, gold mixing, one database per set."""

from __future__ import annotations

import os
import sqlite3
import stat
import time

import pytest

from annotation.store import BadRequest, Conflict, NotFound, Replay, Store, preferred_from_choice
from core.errors import DataError

LEASE = 300.0


def _items(n, risk="exposure"):
    return [{"pair_id": f"p{i:03d}", "row_index": i, "caption": f"caption {i}", "risk": risk, "proposal": "0",
             "scores_0": "{}", "scores_1": "{}"} for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "a.sqlite")
    s.import_items(_items(6), "fp")
    yield s
    s.close()


def _user(store, name):
    token = store.add_user(name)
    return store.login(token, 1.0)[1].user


def _tags(risk):
    return ["artefact"]


def _decide(store, user, view, choice, key, overlap=2, tags=()):
    return store.submit(user, view["assignment_id"], choice, list(tags), "", key, _tags, overlap)


def test_wal_mode_and_full_sync(store):
    with store.connection() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_item_is_never_out_with_more_than_overlap_annotators(store):
    users = [_user(store, f"u{i}") for i in range(5)]
    handed = {}
    for user in users:
        while True:
            view = store.next_item(user, overlap=2, lease_seconds=LEASE, gold_every=1000)
            if view is None or view["assignment_id"] in handed:
                break
            handed[view["assignment_id"]] = view["caption"]
            _decide(store, user, view, "left", f"key-{view['assignment_id']}")
    per_item = {}
    for row in store.decisions():
        per_item[row["pair_id"]] = per_item.get(row["pair_id"], 0) + 1
    assert per_item and max(per_item.values()) == 2
    assert sum(per_item.values()) == 12  # 6 items x overlap 2: all done, nothing beyond N


def test_live_leases_count_and_expired_leases_free_the_slot(store):
    a, b, c = (_user(store, n) for n in "abc")
    seen_a = {store.next_item(a, 1, LEASE, 1000)["caption"]}
    seen_b = {store.next_item(b, 1, LEASE, 1000)["caption"]}
    assert seen_a != seen_b  # overlap 1: a leased item is not handed to b
    # c's short lease expires, so that item may go to someone else; b's live lease keeps its item away
    short = store.next_item(c, 1, 0.05, 1000)
    time.sleep(0.1)
    seen = set()
    while (view := store.next_item(a, 1, LEASE, 1000)) is not None:
        seen.add(view["caption"])
        _decide(store, a, view, "right", f"ka-{view['assignment_id']}", overlap=1)
    assert short["caption"] in seen
    assert not seen & seen_b
    assert len(seen) == 5  # 6 items, one out with b


def test_late_submission_after_expired_lease_on_a_full_item_is_refused(store):
    a, b = _user(store, "a"), _user(store, "b")
    stale = store.next_item(a, 1, 0.05, 1000)
    time.sleep(0.1)
    while True:  # b takes everything, including a's expired item
        view = store.next_item(b, 1, LEASE, 1000)
        if view is None:
            break
        _decide(store, b, view, "left", f"kb-{view['assignment_id']}", overlap=1)
    with pytest.raises(Conflict):
        _decide(store, a, stale, "left", "late-key-1", overlap=1)


def test_left_right_mapping_is_random_and_recorded(store):
    mappings = set()
    for i in range(12):
        user = _user(store, f"m{i}")
        view = store.next_item(user, 100, LEASE, 1000)
        mappings.add(view["left_column"])
        _decide(store, user, view, "left", f"key-map-{i}", overlap=100)
        row = [r for r in store.decisions() if r["annotator"] == f"m{i}"][0]
        assert row["left_column"] == view["left_column"]
        assert row["preferred"] == str(view["left_column"])  # "left" means the column shown on the left
    assert mappings == {0, 1}  # 12 draws: both orders occur (p of failure 2^-11)
    assert preferred_from_choice("right", 0) == "1" and preferred_from_choice("right", 1) == "0"
    assert preferred_from_choice("tie", 1) == "tie" and preferred_from_choice("skip", 0) is None


def test_resubmission_replaces_and_replay_is_refused(store):
    user = _user(store, "r")
    view = store.next_item(user, 2, LEASE, 1000)
    first = _decide(store, user, view, "left", "key-first")
    assert first["revision"] == 1
    with pytest.raises(Replay) as replay:
        _decide(store, user, view, "right", "key-first")
    assert replay.value.original == first
    second = _decide(store, user, view, "right", "key-second", tags=["artefact"])
    assert second["revision"] == 2
    rows = store.decisions()
    assert len(rows) == 1 and rows[0]["choice"] == "right" and rows[0]["tags"] == ["artefact"]
    assert rows[0]["first_decided_at"] <= rows[0]["decided_at"]


def test_bad_writes_are_refused(store):
    user, other = _user(store, "x"), _user(store, "y")
    view = store.next_item(user, 2, LEASE, 1000)
    with pytest.raises(NotFound):
        store.submit(other, view["assignment_id"], "left", [], "", "key-other", _tags, 2)
    with pytest.raises(NotFound):
        store.submit(user, "no-such-assignment", "left", [], "", "key-unknown", _tags, 2)
    with pytest.raises(BadRequest, match="reason tag"):
        store.submit(user, view["assignment_id"], "left", ["made up"], "", "key-tags", _tags, 2)
    with pytest.raises(BadRequest, match="idempotency_key"):
        store.submit(user, view["assignment_id"], "left", [], "", "short", _tags, 2)
    assert store.decisions() == []


def test_undo_withdraws_the_last_decision_and_hands_it_back_first(store):
    user = _user(store, "u")
    first = store.next_item(user, 2, LEASE, 1000)
    _decide(store, user, first, "left", "key-undo-d1")
    second = store.next_item(user, 2, LEASE, 1000)
    _decide(store, user, second, "tie", "key-undo-d2")
    third = store.next_item(user, 2, LEASE, 1000)  # on screen, undecided
    assert store.undo(user, "key-undo-1", LEASE)["undone"] == second["assignment_id"]
    assert store.next_item(user, 2, LEASE, 1000)["assignment_id"] == second["assignment_id"]
    assert store.undo(user, "key-undo-2", LEASE)["undone"] == first["assignment_id"]
    assert store.decisions() == []
    with pytest.raises(Replay):
        store.undo(user, "key-undo-2", LEASE)
    assert store.undo(user, "key-undo-3", LEASE)["undone"] is None
    assert third["assignment_id"] != first["assignment_id"]
    with store.connection() as conn:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM events ORDER BY event_id")]
    assert kinds == ["decision", "decision", "undo", "undo"]  # the audit log keeps what was undone


def test_tokens_are_hashed_and_revocation_is_immediate(store):
    token = store.add_user("rev")
    session_id, session = store.login(token, 1.0)
    assert store.session(session_id).user.name == "rev"
    with store.connection() as conn:
        stored = conn.execute("SELECT token_hash FROM users WHERE name='rev'").fetchone()[0]
    assert token not in stored and len(stored) == 64
    store.revoke_user("rev")
    assert store.session(session_id) is None
    with pytest.raises(NotFound):
        store.login(token, 1.0)
    with pytest.raises(NotFound):
        store.login("x" * 43, 1.0)
    with pytest.raises(DataError, match="already exists"):
        store.add_user("rev")
    with pytest.raises(DataError, match="must be"):
        store.add_user("<script>")


def test_gold_items_are_mixed_in(tmp_path):
    store = Store(tmp_path / "g.sqlite")
    store.import_items(_items(20), "fp")
    store.set_gold({"p000": "0", "p001": "1"})
    user = _user(store, "g")
    served = []
    for i in range(10):
        view = store.next_item(user, 3, LEASE, gold_every=4)
        served.append(view["caption"])
        _decide(store, user, view, "left", f"key-gold-{i}", overlap=3)
    gold_positions = [i for i, c in enumerate(served) if c in ("caption 0", "caption 1")]
    assert gold_positions == [3, 7]  # every 4th hand-out
    with pytest.raises(DataError, match="not among"):
        store.set_gold({"nope": "0"})
    with pytest.raises(DataError, match="must be one of"):
        store.set_gold({"p002": "left"})
    store.close()


def test_a_database_belongs_to_one_set(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.import_items(_items(3), "fingerprint-a")
    assert store.import_items(_items(3), "fingerprint-a") == 0  # idempotent restart
    with pytest.raises(DataError, match="another preference set"):
        store.import_items(_items(3), "fingerprint-b")
    store.close()


def test_schema_constraints_reject_impossible_rows(store):
    with store.connection() as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE items SET gold_answer='left' WHERE pair_id='p000'")


def test_database_files_are_private(tmp_path):
    previous = os.umask(0o022)  # the common default, which would make a new file world-readable
    try:
        store = Store(tmp_path / "private.sqlite")
        store.import_items(_items(2), "fp")
        user = _user(store, "p")
        _decide(store, user, store.next_item(user, 2, LEASE, 1000), "left", "key-private-1")
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        store.close()
    finally:
        os.umask(previous)
    assert set(files) >= {"private.sqlite", "private.sqlite-wal", "private.sqlite-shm"}
    assert all(mode == 0o600 for mode in files.values()), {name: oct(mode) for name, mode in files.items()}


def test_undo_gives_back_the_tags_and_note(store):
    user = _user(store, "t")
    view = store.next_item(user, 2, LEASE, 1000)
    store.submit(user, view["assignment_id"], "right", ["artefact"], "left arm looks wrong", "key-tn-1", _tags, 2)
    undone = store.undo(user, "key-tn-2", LEASE)
    assert undone["undone"] == view["assignment_id"]
    assert (undone["tags"], undone["note"]) == (["artefact"], "left arm looks wrong")
