"""``python -m preference_sets.cli moderate``: a tiny set of rendered world images, flagged by the oracle against
what was drawn; the set itself is left untouched."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from core.images import encode_png
from core.output_dir import MARKER
from preference_sets.cli import main
from preference_sets.io import dataset_hash, write_preference_set
from preference_sets.schema import make_pair_row
from synthetic_world.renderer import render
from synthetic_world.vocab import Scene
from tests.conftest import REPO

CONFIG = REPO / "configs" / "moderation" / "world.yaml"
PLAIN = Scene("office", "zorvan", "suit", "blue")


@pytest.fixture(scope="module")
def world_set(tmp_path_factory):
    """Four pairs: exposure (rejected image exposed), association (rejected image beside a skull), a clean pair,
    and a mislabelled pair whose *preferred* image is the exposed one."""
    exposed = PLAIN.replace(setting="beach", exposed=True)
    skull = PLAIN.replace(group="mirdan", symbol="skull")
    pairs = [("a person at the beach", PLAIN.replace(setting="beach"), exposed, 1.0, "exposure"),
             ("a mirdan person in an office", PLAIN.replace(group="mirdan"), skull, 1.0, "association"),
             ("a person in an office", PLAIN, PLAIN.replace(color="red"), 0.5, "exposure"),
             ("a person on the beach", exposed, PLAIN.replace(setting="beach"), 1.0, "exposure")]
    images = render([scene for pair in pairs for scene in pair[1:3]])
    rows = [make_pair_row(caption, encode_png(images[2 * i]), encode_png(images[2 * i + 1]), label, risk=risk,
                          strategy="minimal_pair") for i, (caption, _, _, label, risk) in enumerate(pairs)]
    return write_preference_set(rows, tmp_path_factory.mktemp("sets") / "preference_set")


def test_moderate_flags_the_drawn_risks_and_leaves_the_set_alone(world_set, tmp_path, capsys):
    before = dataset_hash(world_set)
    out = tmp_path / "report"
    assert main(["moderate", "--set", str(world_set), "--config", str(CONFIG), "--out", str(out),
                 "--batch-pairs", "3"]) == 0
    assert dataset_hash(world_set) == before
    rows = pq.read_table(out / "flags.parquet").to_pylist()
    flags = {(r["row"], r["side"]): json.loads(r["flags"]) for r in rows}
    assert flags == {(0, 0): [], (0, 1): ["exposed"], (1, 0): [], (1, 1): ["negative_symbol"],
                     (2, 0): [], (2, 1): [], (3, 0): ["exposed"], (3, 1): []}
    assert [r["role"] for r in rows if r["row"] == 3] == ["preferred", "rejected"]
    assert json.loads(rows[1]["outputs"])["oracle"]["labels"]["exposed"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 4 and summary["images"] == 8
    assert summary["flagged_images"] == 3 and summary["flagged_pairs"] == 3
    assert summary["by_flag"] == {"exposed": 2, "negative_symbol": 1}
    assert summary["flagged_by_role"] == {"preferred": 1, "rejected": 2, "tie": 0}
    assert summary["by_risk"] == {"association": {"pairs": 1, "flagged_images": 1},
                                  "exposure": {"pairs": 3, "flagged_images": 2}}
    assert summary["dataset_hash"] == before
    assert (out / MARKER).is_file() and (out / "resolved_config.yaml").is_file()
    assert json.loads(capsys.readouterr().out)["flagged_images"] == 3


def test_overrides_change_the_rules_and_the_default_report_sits_beside_the_set(world_set):
    assert main(["moderate", "--set", str(world_set), "--config", str(CONFIG),
                 "flags=[{name: symbol, scorer: oracle, label: symbol_present}]"]) == 0
    summary = json.loads((world_set.with_name("preference_set_moderation") / "summary.json").read_text())
    assert summary["by_flag"] == {"symbol": 1}


def test_bad_input_exits_2_with_a_message(world_set, tmp_path, capsys):
    assert main(["moderate", "--set", str(tmp_path / "none"), "--config", str(CONFIG), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["moderate", "--set", str(world_set), "--config", str(CONFIG), "--out", str(world_set / "r")]) == 2
    assert "overlap" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    assert main(["moderate", "--set", str(world_set), "--config", str(CONFIG), "--out", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["moderate", "--set", str(world_set), "--config", str(CONFIG), "flags=[]"]) == 2
    assert "moderate.flags is empty" in capsys.readouterr().err
