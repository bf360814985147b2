"""The command line: users, report, adjudication queue, export, and clear errors (exit 2)."""

from __future__ import annotations

import json

import pytest

from annotation.cli import main
from annotation.store import Store
from annotation.testing import Client, LiveServer, make_config
from preference_sets.io import read_rows


def test_cli_workflow(small_set, tmp_path, capsys):
    db = tmp_path / "cli.sqlite"
    assert main(["add-user", "ann", "--db", str(db)]) == 0
    token_ann = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["add-user", "bob", "--db", str(db)]) == 0
    token_bob = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["add-user", "ann", "--db", str(db)]) == 2
    assert "already exists" in capsys.readouterr().err

    server = LiveServer(small_set, db, make_config(overlap=2, max_items=4, risks=["exposure", "stereotype"]))
    try:
        for token, preferred in ((token_ann, "0"), (token_bob, "1")):  # they disagree on everything
            client = Client(server.host, server.port)
            assert client.login(token) == 200
            while (item := client.next()) is not None:
                with server.store.connection() as conn:
                    left = conn.execute("SELECT left_column FROM assignments WHERE assignment_id=?",
                                        (item["assignment_id"],)).fetchone()[0]
                choice = "left" if str(left) == preferred else "right"
                assert client.decide(item["assignment_id"], choice, f"key-{item['assignment_id']}")[0] == 200
    finally:
        server.close()
    assert {i["risk"] for i in Store(db).items()} <= {"exposure", "stereotype"} and len(Store(db).items()) == 4

    assert main(["list-users", "--db", str(db)]) == 0
    assert "ann" in capsys.readouterr().out
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cohen_kappa_pairs"][0]["shared_items"] == 4 and report["disputed"] == 4
    capsys.readouterr()
    assert main(["adjudicate", "--db", str(db)]) == 0
    queue = [json.loads(line) for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(queue) == 4
    assert main(["adjudicate", "--db", str(db), "--pair-id", queue[0]["pair_id"], "--answer", "tie", "--by", "lead"]) == 0
    assert main(["adjudicate", "--db", str(db), "--pair-id", "nope", "--answer", "tie", "--by", "lead"]) == 2

    out = tmp_path / "exported"
    args = ["export", "--set", str(small_set), "--db", str(db), "--out", str(out), "overlap=2",
            "max_items=4", "risks=[exposure,stereotype]"]
    assert main(args) == 0
    rows = read_rows(out, columns=["pair_id", "label_0", "annotation_status"])
    assert len(rows) == 24 - 3  # 3 unresolved disputes dropped, the adjudicated one kept as a tie
    tie = [r for r in rows if r["pair_id"] == queue[0]["pair_id"]][0]
    assert (tie["label_0"], tie["annotation_status"]) == (0.5, "adjudicated")
    assert main(args) == 2  # the folder exists: no silent overwrite
    assert "already exists" in capsys.readouterr().err

    assert main(["revoke-user", "bob", "--db", str(db)]) == 0
    assert main(["revoke-user", "bob", "--db", str(db)]) == 2


@pytest.mark.parametrize("argv, message", [
    (["report"], "--set"),
    (["report", "--db", "/nonexistent/x.sqlite"], "does not exist"),
    (["serve", "--set", "/nonexistent/set"], "does not exist"),
    (["report", "--db", "x.sqlite", "overlap=0"], "overlap"),
    (["report", "--db", "x.sqlite", "colour=1"], "unknown key"),
    (["serve", "--set", "x", "host=0.0.0.0"], "allow_remote"),
])
def test_cli_errors_are_clear(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_add_user_refuses_an_unknown_set(tmp_path, capsys):
    typo = tmp_path / "runs" / "demo" / "preferense_set"
    assert main(["add-user", "alice", "--set", str(typo)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.rglob("*")) == []  # no database, no annotation folder
