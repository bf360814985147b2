"""Sets made elsewhere: validate, import and export read Pick-a-Pic-style parquet files and folders and
save_to_disk folders; bad input is refused naming the row or file, and nothing is written."""

from __future__ import annotations

import io
import json
import math

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tests.preference_sets.pickapic_helpers import dataset, five_columns, flat_folder, hub_folder, write_parquet
from tests.preference_sets.prefset_helpers import make_rows

from core.errors import DataError
from core.output_dir import has_marker
from preference_sets.cli import main
from preference_sets.importer import import_set
from preference_sets.io import read_card_info, read_rows, write_preference_set
from preference_sets.ops import export
from preference_sets.schema import DEFAULT_RISK
from preference_sets.validate import validate_set


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_validate_accepts_five_columns_in_every_layout(tmp_path):
    single = write_parquet(tmp_path / "one.parquet", dataset(4, ties=1))
    for source in (single, flat_folder(tmp_path / "flat", 4), hub_folder(tmp_path / "hub", 4)):
        report = validate_set(source)
        assert report.ok, report.summary()
        assert report.counts["format"] == "Pick-a-Pic"
    assert validate_set(single).counts["ties"] == 1
    assert validate_set(tmp_path / "hub").num_rows == 4  # the train split only
    assert validate_set(tmp_path / "hub", split="test").num_rows == 2


def test_validate_warns_on_unused_columns_and_refuses_half_our_format(tmp_path):
    extra = write_parquet(tmp_path / "extra.parquet", dataset(3, user_id=[1, 2, 3]))
    report = validate_set(extra)
    assert report.ok and "['user_id'] are not used" in report.warnings[0].message
    # Some of our provenance columns but not all: a damaged set of ours, not a Pick-a-Pic set.
    half = write_parquet(tmp_path / "half.parquet", dataset(3, risk=["exposure"] * 3))
    messages = [p.message for p in validate_set(half).errors]
    assert "missing column 'pair_id' (string)" in messages


def test_import_fills_documented_provenance_and_card_states_it(tmp_path):
    source = write_parquet(tmp_path / "pickapic.parquet", dataset(5, ties=2))
    summary = import_set(source, tmp_path / "set")
    assert (summary["rows_in"], summary["rows"], summary["source"]["format"]) == (7, 7, "Pick-a-Pic")
    rows = read_rows(tmp_path / "set")
    original = five_columns(5, ties=2)
    assert [r["caption"] for r in rows] == original["caption"]
    assert [r["jpg_0"] for r in rows] == original["jpg_0"]  # the source's bytes, unchanged
    assert [r["label_0"] for r in rows] == original["label_0"]  # ties kept: the trainer leaves them out
    first = rows[0]
    assert (first["risk"], first["strategy"], first["seed_0"], first["seed_1"]) == (DEFAULT_RISK, "external", -1, -1)
    assert (first["prompt_0"], first["prompt_1"]) == (first["caption"], first["caption"])
    assert (first["model_id"], first["generation"], first["annotation_status"], first["annotations"]) == (
        "", "{}", "auto", "[]")
    assert math.isnan(first["pair_similarity"])
    assert validate_set(tmp_path / "set", expected_size=8).ok
    card = (tmp_path / "set" / "README.md").read_text()
    assert "## Provenance defaults" in card and f"| `risk` | {DEFAULT_RISK} |" in card
    assert "| `seed_0, seed_1` | -1 (unknown) |" in card
    assert read_card_info(tmp_path / "set")["lineage"]["rows"] == 7
    assert has_marker(tmp_path / "set")


def test_import_reads_the_hub_layout_by_split_and_a_flat_folder(tmp_path):
    hub_folder(tmp_path / "hub", 6)
    assert import_set(tmp_path / "hub", tmp_path / "train")["rows"] == 6
    assert import_set(tmp_path / "hub", tmp_path / "test", split="test", risk="exposure")["rows"] == 2
    assert {r["risk"] for r in read_rows(tmp_path / "test")} == {"exposure"}
    with pytest.raises(DataError, match=r"no 'validation' split; the shards hold split\(s\) \['test', 'train'\]"):
        import_set(tmp_path / "hub", tmp_path / "v", split="validation")
    (tmp_path / "hub" / "data" / "train-00001-of-00002-0a1b2c3d.parquet").unlink()
    with pytest.raises(DataError, match=r"missing shard\(s\) \['train-00001-of-00002.parquet'\]"):
        import_set(tmp_path / "hub", tmp_path / "t2")
    flat_folder(tmp_path / "flat", 5, files=3)
    assert import_set(tmp_path / "flat", tmp_path / "from_flat")["rows"] == 5


def test_import_of_a_save_to_disk_folder_with_image_features(tmp_path):
    ds = dataset(4).cast_column("jpg_1", datasets.Image())  # datasets stores it as a {bytes, path} struct
    datasets.DatasetDict({"train": ds, "test": dataset(2, start=100)}).save_to_disk(str(tmp_path / "saved"))
    summary = import_set(tmp_path / "saved", tmp_path / "set")
    assert (summary["source"]["layout"], summary["rows"]) == ("save_to_disk folder", 4)
    assert [r["jpg_1"] for r in read_rows(tmp_path / "set")] == five_columns(4)["jpg_1"]
    dataset(3).save_to_disk(str(tmp_path / "single"))
    assert import_set(tmp_path / "single", tmp_path / "set2")["rows"] == 3


def test_undecodable_image_is_refused_with_its_row_and_nothing_is_written(tmp_path, capsys):
    columns = five_columns(6)
    columns["jpg_1"][4] = columns["jpg_1"][4][:30]  # a truncated PNG
    source = write_parquet(tmp_path / "src" / "pairs.parquet", datasets.Dataset.from_dict(columns))
    assert main(["import", str(tmp_path / "src"), str(tmp_path / "set")]) == 2
    err = capsys.readouterr().err
    assert "row 4 (pairs.parquet): jpg_1: image bytes do not decode" in err and "--skip-bad-rows" in err
    assert not (tmp_path / "set").exists() and source.is_file()
    # Left out on request, and named in the card.
    summary = import_set(source, tmp_path / "set", skip_bad_rows=True)
    assert (summary["rows"], summary["bad_rows_left_out"]) == (5, 1)
    assert "row 4 (pairs.parquet)" in read_card_info(tmp_path / "set")["lineage"]["bad_rows"][0]


def test_bad_labels_empty_captions_and_path_only_images_are_named(tmp_path):
    columns = five_columns(4)
    columns["label_0"][1], columns["caption"][2] = 0.7, " "
    source = write_parquet(tmp_path / "bad.parquet", datasets.Dataset.from_dict(columns))
    with pytest.raises(DataError) as caught:
        import_set(source, tmp_path / "set")
    assert "row 1 (bad.parquet): labels (0.7, 0.0) must be" in str(caught.value)
    assert "row 2 (bad.parquet): caption is empty" in str(caught.value)
    # A datasets.Image column that points at files instead of holding their bytes.
    table = dataset(2).data.table
    paths = pa.array([{"bytes": None, "path": "/elsewhere/a.png"}] * 2,
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(table.set_column(table.schema.get_field_index("jpg_0"), "jpg_0", paths), tmp_path / "paths.parquet")
    with pytest.raises(DataError, match=r"row 0 \(paths.parquet\): jpg_0: the image is stored as a file path"):
        import_set(tmp_path / "paths.parquet", tmp_path / "set")
    assert not (tmp_path / "set").exists()


def test_truncated_shard_is_named_by_import_export_and_validate(tmp_path):
    folder = flat_folder(tmp_path / "flat", 6)
    _truncate(folder / "part1.parquet")
    for action in (lambda: import_set(folder, tmp_path / "set"), lambda: export(folder, tmp_path / "exp")):
        with pytest.raises(DataError, match=r"part1.parquet cannot be read \(truncated"):
            action()
    assert not (tmp_path / "set").exists() and not (tmp_path / "exp").exists()
    (problem,) = validate_set(folder).errors
    assert problem.kind == "shard" and problem.shard == "part1.parquet"
    # Our own set: export used to report this as "no pairs left after removing 0 tie(s)".
    ours = write_preference_set(make_rows(10), tmp_path / "ours", shard_size=5)
    _truncate(ours / "data" / "train-00000-of-00002.parquet")
    with pytest.raises(DataError, match="train-00000-of-00002.parquet cannot be read") as caught:
        export(ours, tmp_path / "exp")
    assert "no pairs left" not in str(caught.value)


def test_export_refuses_undecodable_images_naming_the_row(tmp_path):
    rows = make_rows(6)
    rows[3] = {**rows[3], "jpg_0": b"not an image"}
    source = write_preference_set(rows, tmp_path / "set")
    with pytest.raises(DataError, match=r"row 3 \(train-00000-of-00001.parquet\): jpg_0: image bytes do not decode"):
        export(source, tmp_path / "exp")
    assert not (tmp_path / "exp").exists()


def test_export_card_names_both_stock_script_flags_and_marks_the_folder(tmp_path):
    export(write_preference_set(make_rows(4), tmp_path / "set"), tmp_path / "exp")
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "--dataset_name=<this folder>" in card and "--dataset_split_name=train" in card
    assert has_marker(tmp_path / "exp")
    # A five-column set exports too (the stock script's view of it: ties removed, split train).
    summary = export(write_parquet(tmp_path / "p.parquet", dataset(3, ties=2)), tmp_path / "exp2")
    assert (summary["rows"], summary["ties_removed"], summary["source"]["format"]) == (3, 2, "Pick-a-Pic")


def test_repeated_pairs_are_kept_once_and_conflicts_counted(tmp_path):
    columns = five_columns(3)
    for key in columns:  # row 3 repeats row 0; row 4 repeats row 1 with the opposite label
        columns[key] += [columns[key][0], columns[key][1]]
    columns["label_0"][4], columns["label_1"][4] = columns["label_1"][1], columns["label_0"][1]
    source = write_parquet(tmp_path / "rep.parquet", datasets.Dataset.from_dict(columns))
    report = validate_set(source)  # Pick-a-Pic repeats comparisons: a warning, not an error
    assert report.ok and report.counts["duplicates"] == 2
    summary = import_set(source, tmp_path / "set")
    assert (summary["rows"], summary["repeats_dropped"], summary["conflicting_repeats_dropped"]) == (3, 1, 1)
    assert validate_set(tmp_path / "set").ok


def test_resolution_resizes_and_centre_crops_other_sizes(tmp_path):
    ds = datasets.Dataset.from_dict({**five_columns(2, size=8)})
    wide = io.BytesIO()
    Image.new("RGB", (24, 12), (200, 10, 10)).save(wide, format="PNG")
    ds = ds.map(lambda r, i: {"jpg_1": wide.getvalue()} if i == 1 else {}, with_indices=True)
    source = write_parquet(tmp_path / "sizes.parquet", ds)
    assert not validate_set(source).ok  # 24x12 beside 8x8
    summary = import_set(source, tmp_path / "set", resolution=8)
    assert summary["images_resized"] == 1
    rows = read_rows(tmp_path / "set")
    assert rows[0]["jpg_1"] == five_columns(2)["jpg_1"][0]  # already 8x8: untouched
    resized = Image.open(io.BytesIO(rows[1]["jpg_1"]))
    assert resized.size == (8, 8) and resized.convert("RGB").getpixel((4, 4)) == (200, 10, 10)
    assert validate_set(tmp_path / "set", expected_size=8).ok


def test_import_cli_and_its_guards(tmp_path, capsys):
    source = write_parquet(tmp_path / "src" / "a.parquet", dataset(3))
    assert main(["import", str(source), str(tmp_path / "set")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 3
    assert main(["import", str(source), str(tmp_path / "set")]) == 2
    assert "already exists" in capsys.readouterr().err
    # Writing the set over (or around) its own source would delete the source.
    assert main(["import", str(tmp_path / "src"), str(tmp_path / "src"), "--overwrite"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "src"), str(tmp_path), "--overwrite"]) == 2
    assert source.is_file()
    (tmp_path / "notes.txt").write_text("hi")
    assert main(["import", str(tmp_path / "notes.txt"), str(tmp_path / "x")]) == 2
    assert "not a .parquet file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty")]) == 2
    assert "no parquet files" in capsys.readouterr().err
    assert pq.read_table(tmp_path / "set" / "data" / "train-00000-of-00001.parquet").num_rows == 3
