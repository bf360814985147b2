"""The trainer reads sets as users have them: five Pick-a-Pic columns in a flat folder, the HF data/ layout,
one parquet file or a save_to_disk folder, and this project's own `export` output."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from tests.preference_sets.pickapic_helpers import dataset, five_columns, flat_folder, hub_folder, write_parquet
from tests.training.conftest import tiny_config

from preference_sets.ops import export
from preference_sets.schema import DEFAULT_RISK
from training.data import load_pairs
from training.lora import LORA_WEIGHT_NAME
from training.train import main, train

SIZE = 32  # the tiny SD1.5 fixture's resolution


@pytest.mark.parametrize("layout", ["flat", "data"])
def test_five_column_set_trains_two_steps(layout, tiny_sd15_path, tmp_path):
    make = flat_folder if layout == "flat" else hub_folder
    data = make(tmp_path / "set", 6, size=SIZE, ties=2)
    summary = train(tiny_config(tiny_sd15_path, data, tmp_path / "run", "max_train_steps=2"))
    # The two ties are left out, as for any preference set; the test split of the data/ layout is not read.
    assert summary["data"] == {"rows": 8, "ties_excluded": 2, "pairs_used": 6}
    assert summary["steps"] == 2 and (tmp_path / "run" / "lora" / LORA_WEIGHT_NAME).is_file()


def test_pairs_get_the_import_defaults_and_winners_follow_the_labels(tiny_sd15_path, tmp_path):
    single = write_parquet(tmp_path / "pairs.parquet", dataset(4, size=SIZE, ties=1))
    pairs = load_pairs(single, SIZE)
    assert pairs.counts() == {"rows": 5, "ties_excluded": 1, "pairs_used": 4}
    assert pairs.risks() == [DEFAULT_RISK] * 4
    columns = five_columns(4, size=SIZE)
    for i in range(4):
        winner = columns["jpg_0"][i] if columns["label_0"][i] == 1.0 else columns["jpg_1"][i]
        assert pairs.image_bytes(i)[0] == winner
    # A risk option must name a risk the set holds: here the default one.
    assert train(tiny_config(tiny_sd15_path, single, tmp_path / "run", "max_train_steps=1",
                             f"rpo_alpha_per_risk={{{DEFAULT_RISK}: 0.1}}"))["pair_visits_per_epoch"] == 4


def test_save_to_disk_folder_with_image_features(tmp_path):
    ds = dataset(3, size=SIZE).cast_column("jpg_0", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    pairs = load_pairs(tmp_path / "saved", SIZE)
    assert len(pairs) == 3 and pairs.image_bytes(1)[0] == five_columns(3, size=SIZE)["jpg_0"][1]  # label_0 = 1


def test_export_round_trips_into_the_trainer(tiny_sd15_path, tiny_set, tmp_path):
    exported = Path(export(tiny_set, tmp_path / "export")["out"])
    original, again = load_pairs(tiny_set, SIZE), load_pairs(exported, SIZE)
    assert len(again) == len(original) == 8 and again.captions() == original.captions()
    assert [again.image_bytes(i) for i in range(8)] == [original.image_bytes(i) for i in range(8)]
    summary = train(tiny_config(tiny_sd15_path, exported, tmp_path / "run", "max_train_steps=2"))
    assert summary["data"] == {"rows": 8, "ties_excluded": 0, "pairs_used": 8}  # export removed the 2 ties


def test_truncated_shard_is_named_before_training(tiny_sd15_path, tmp_path, capsys):
    data = flat_folder(tmp_path / "set", 6, size=SIZE)
    shard = data / "part0.parquet"
    shard.write_bytes(shard.read_bytes()[:-200])
    code = main([f"model={tiny_sd15_path}", f"data={data}", f"output_dir={tmp_path / 'out'}",
                 f"work_dir={tmp_path / 'work'}", "max_train_steps=1", "progress_bar=false", "report_to=none"])
    err = capsys.readouterr().err
    assert code == 2 and "part0.parquet cannot be read (truncated" in err and "no usable pairs" not in err
    assert not (tmp_path / "out").exists()


def test_set_hash_follows_the_content(tmp_path):
    first = load_pairs(write_parquet(tmp_path / "a" / "x.parquet", dataset(3, size=SIZE)), SIZE).set_hash
    assert load_pairs(write_parquet(tmp_path / "b" / "x.parquet", dataset(3, size=SIZE)), SIZE).set_hash == first
    assert load_pairs(write_parquet(tmp_path / "c" / "x.parquet", dataset(4, size=SIZE)), SIZE).set_hash != first
