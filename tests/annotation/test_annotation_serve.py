"""Starting `serve` as a real process: an invalid set is refused with its bad rows named, a failed
start leaves nothing it created behind (and nothing it did not create is touched), and the datasets
cache stays in the annotation folder, never in ~/.cache."""

from __future__ import annotations

import shutil
import socket
import sqlite3

from annotation.cli import main
from annotation.store import Store
from annotation.testing import Client, build_set, figure_png, launch_serve, stop

NOT_AN_IMAGE = b"this is not an image at all"


def test_invalid_set_is_refused_and_the_repaired_set_then_starts(tmp_path):
    set_folder = tmp_path / "preference_set"
    pairs = [(figure_png(i, 0), figure_png(i, 1)) for i in range(4)]
    pairs[2] = (figure_png(2, 0), NOT_AN_IMAGE)
    build_set(set_folder, 4, image_pairs=pairs)
    db = tmp_path / "annotation" / "preference_set.sqlite"

    proc, host, _, output = launch_serve(set_folder, db)
    if host is not None:
        stop(proc)
    assert host is None, "an invalid set was served:\n" + output
    assert proc.returncode == 2
    assert "row 2" in output and "jpg_1" in output  # the bad row and column are named
    assert not db.exists() and not (tmp_path / "annotation").exists()  # nothing left behind

    shutil.rmtree(set_folder)
    build_set(set_folder, 4)  # the repaired set, same folder
    proc, host, _, output = launch_serve(set_folder, db)
    try:
        assert host is not None, output  # no stale database blocks it
    finally:
        stop(proc)


def test_failed_start_removes_only_what_it_created(small_set, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        fresh = tmp_path / "new" / "annotations.sqlite"
        assert main(["serve", "--set", str(small_set), "--db", str(fresh), "--port", str(port)]) == 2
        assert "cannot listen" in capsys.readouterr().err
        assert not fresh.parent.exists()  # the folder, database, WAL/SHM and config were all this run's

        existing = tmp_path / "old" / "annotations.sqlite"
        assert main(["add-user", "alice", "--db", str(existing)]) == 0
        (existing.parent / "notes.txt").write_text("someone else's file")
        assert main(["serve", "--set", str(small_set), "--db", str(existing), "--port", str(port)]) == 2
    assert (existing.parent / "notes.txt").read_text() == "someone else's file"
    with sqlite3.connect(existing) as conn:
        assert conn.execute("SELECT name FROM users").fetchall() == [("alice",)]


def test_datasets_cache_stays_out_of_home(small_set, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    db = tmp_path / "run" / "annotation" / "set.sqlite"
    store = Store(db)
    token = store.add_user("alice")
    store.close()
    env = {"HOME": str(home), "HF_HOME": None, "HF_DATASETS_CACHE": None, "XDG_CACHE_HOME": None}
    proc, host, port, output = launch_serve(small_set, db, env=env)
    try:
        assert host is not None, output
        client = Client(host, port)
        assert client.login(token) == 200
        item = client.next()
        status, data, _ = client.request("GET", item["images"]["left"])
        assert status == 200 and data.startswith(b"\x89PNG")
    finally:
        stop(proc)
    assert list(home.rglob("*")) == []  # nothing written under ~ (no ~/.cache/huggingface)
    assert any(db.parent.rglob("*.arrow"))  # the cache lives beside the database
