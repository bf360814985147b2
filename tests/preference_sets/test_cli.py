"""The CLI: each command works, bad input exits 2 with a message that names the problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from tests.preference_sets.prefset_helpers import make_rows, png, write_raw

from preference_sets.cli import main
from preference_sets.io import read_rows, write_preference_set

REPO = Path(__file__).resolve().parents[2]


def test_validate_ok_and_invalid(tmp_path, capsys):
    good = write_preference_set(make_rows(6), tmp_path / "good")
    assert main(["validate", str(good), "--expected-size", "8"]) == 0
    assert "valid; 6 rows" in capsys.readouterr().out

    rows = make_rows(6)
    rows[4] = {**rows[4], "jpg_0": png(1)[:30]}
    bad = write_raw(tmp_path / "bad", rows)
    assert main(["validate", str(bad)]) == 2
    assert "row 4, train-00000-of-00001.parquet: jpg_0: image bytes do not decode" in capsys.readouterr().err


def test_validate_leakage_from_prompt_file(tmp_path, capsys):
    folder = write_preference_set(make_rows(4), tmp_path / "set")
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text(json.dumps({"prompt": "a photo of person number 1"}) + "\n", encoding="utf-8")
    assert main(["validate", str(folder), "--eval-prompts", str(prompts)]) == 2
    assert "[leakage] row 2" in capsys.readouterr().err


def test_stats_merge_split_export(tmp_path, capsys):
    a = write_preference_set(make_rows(8, ties_every=4), tmp_path / "a")
    b = write_preference_set(make_rows(4, start=8), tmp_path / "b")
    assert main(["stats", str(a)]) == 0
    assert json.loads(capsys.readouterr().out)["num_ties"] == 2
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 12
    assert main(["split", str(tmp_path / "m"), "--out", str(tmp_path / "s"), "--fractions", "train=0.5,val=0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == {"train": 6, "val": 6}
    assert main(["export", str(tmp_path / "s" / "train"), "--out", str(tmp_path / "e")]) == 0
    labels = pq.read_table(tmp_path / "e" / "data" / "train-00000-of-00001.parquet")["label_0"].to_pylist()
    assert labels and 0.5 not in labels
    exported = json.loads((tmp_path / "e" / "export.json").read_text())
    assert exported["rows"] == len(labels) == 6 - exported["ties_removed"]


def test_bad_input_exits_2_with_named_problem(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope")]) == 2
    assert "nope: folder does not exist" in capsys.readouterr().err
    folder = write_preference_set(make_rows(4), tmp_path / "set")
    assert main(["split", str(folder), "--out", str(tmp_path / "s"), "--fractions", "train:0.5"]) == 2
    assert "must look like name=0.8" in capsys.readouterr().err
    other = write_preference_set(make_rows(2), tmp_path / "other")
    assert main(["export", str(folder), "--out", str(other)]) == 2
    assert "already exists" in capsys.readouterr().err
    # Even with --overwrite, an output that is (or holds) the input would delete it when written.
    assert main(["export", str(folder), "--out", str(folder), "--overwrite"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(folder), "--overwrite"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert len(read_rows(folder)) == 4


def test_module_entry_point_runs(tmp_path):
    folder = write_preference_set(make_rows(2), tmp_path / "set")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "preference_sets.cli", "validate", str(folder / "missing")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and "folder does not exist" in done.stderr
