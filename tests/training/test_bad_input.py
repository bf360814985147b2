"""Bad input fails with a clear message (exit 2) before any training, leaving nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.conftest import write_tiny_set
from training.train import main


def _run(tmp_path: Path, model: Path, data: Path, *extra: str) -> int:
    return main([
        f"model={model}", f"data={data}", f"output_dir={tmp_path / 'out'}", f"work_dir={tmp_path / 'work'}",
        "mixed_precision=fp32", "max_train_steps=2", "micro_batch_size=2", "progress_bar=false",
        "report_to=none", *extra,
    ])


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "work").glob("checkpoints/*")) if (tmp_path / "work").exists() else True


def test_unknown_config_key(tiny_sd15_path, tiny_set, tmp_path, capsys):
    assert _run(tmp_path, tiny_sd15_path, tiny_set, "learning_rat=1e-4") == 2
    err = capsys.readouterr().err
    assert "learning_rat" in err and "learning_rate" in err
    _nothing_written(tmp_path)


def test_bad_config_value(tiny_sd15_path, tiny_set, tmp_path, capsys):
    assert _run(tmp_path, tiny_sd15_path, tiny_set, "prompt_dropout=1.5") == 2
    assert "prompt_dropout" in capsys.readouterr().err


def test_missing_model(tiny_set, tmp_path, capsys):
    assert _run(tmp_path, tmp_path / "no-such-model", tiny_set) == 2
    assert "no-such-model" in capsys.readouterr().err
    _nothing_written(tmp_path)


def test_missing_set(tiny_sd15_path, tmp_path, capsys):
    assert _run(tmp_path, tiny_sd15_path, tmp_path / "no-set") == 2
    assert "no-set" in capsys.readouterr().err


def test_all_ties(tiny_sd15_path, tmp_path, capsys):
    data = write_tiny_set(tmp_path / "ties", num_pairs=0, ties=4)
    assert _run(tmp_path, tiny_sd15_path, data) == 2
    assert "ties" in capsys.readouterr().err
    _nothing_written(tmp_path)


def test_resolution_mismatch(tiny_sd15_path, tmp_path, capsys):
    data = write_tiny_set(tmp_path / "small", num_pairs=4, size=16)  # the tiny model works at 32 px
    assert _run(tmp_path, tiny_sd15_path, data) == 2
    assert "32x32" in capsys.readouterr().err
    _nothing_written(tmp_path)


def test_corrupt_image(tiny_sd15_path, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = write_tiny_set(tmp_path / "corrupt", num_pairs=4)
    shard = next((data / "data").glob("*.parquet"))
    table = pq.read_table(shard)
    images = table.column("jpg_1").to_pylist()
    images[2] = images[2][:40]  # truncated PNG
    table = table.set_column(table.schema.get_field_index("jpg_1"), "jpg_1", pa.array(images, pa.binary()))
    pq.write_table(table, shard)
    assert _run(tmp_path, tiny_sd15_path, data) == 2
    assert "row 2" in capsys.readouterr().err
    _nothing_written(tmp_path)


def test_wrong_schema(tiny_sd15_path, tmp_path, capsys):
    import pyarrow.parquet as pq

    data = write_tiny_set(tmp_path / "schema", num_pairs=4)
    shard = next((data / "data").glob("*.parquet"))
    pq.write_table(pq.read_table(shard).drop_columns(["label_1"]), shard)
    assert _run(tmp_path, tiny_sd15_path, data) == 2
    assert "label_1" in capsys.readouterr().err
    _nothing_written(tmp_path)


def test_bad_lora_target(tiny_sd15_path, tiny_set, tmp_path, capsys):
    assert _run(tmp_path, tiny_sd15_path, tiny_set, "lora.target_modules=[no_such_layer]") == 2
    assert "no_such_layer" in capsys.readouterr().err
    _nothing_written(tmp_path)


def test_divergence_stops_keeping_checkpoints(tiny_sd15_path, tiny_set, tmp_path, capsys):
    # An absurd learning rate blows the LoRA up after the first update: the loss turns inf/NaN.
    code = _run(tmp_path, tiny_sd15_path, tiny_set, "learning_rate=1e30", "max_grad_norm=0", "max_train_steps=6",
                "checkpoint_every=1", "keep_checkpoints=10", "log_every=1", "lr_warmup_steps=0")
    assert code == 2
    err = capsys.readouterr().err
    assert "loss became" in err and "checkpoint-0000001" in err
    assert not (tmp_path / "out").exists()
    # No checkpoint is written at or after the step whose loss was not finite.
    saved = sorted(p.name for p in (tmp_path / "work" / "checkpoints").iterdir())
    assert saved and saved[-1] == "checkpoint-0000001"


def test_global_batch_sizes_derive_micro_batches_or_fail_clearly():
    from core.errors import ConfigError
    from training.config import RetainSettings, TrainConfig

    assert TrainConfig(model="m", micro_batch_size=5).micro_batch_sizes(2) == (5, 8)  # unset: the per-process sizes
    with_retain = TrainConfig(model="m", pairs_per_step=16, retain=RetainSettings(images_per_step=4))
    assert with_retain.micro_batch_sizes(2) == (8, 2)
    with pytest.raises(ConfigError, match="pairs_per_step=6 does not split over 1 process"):
        TrainConfig(model="m", pairs_per_step=6, gradient_accumulation_steps=4).micro_batch_sizes(1)
    with pytest.raises(ConfigError, match="retain.images_per_step=3 does not split over 2 process"):
        TrainConfig(model="m", retain=RetainSettings(images_per_step=3)).micro_batch_sizes(2)


def test_global_batch_that_does_not_split_fails_before_training(tiny_sd15_path, tiny_set, tmp_path, capsys):
    assert _run(tmp_path, tiny_sd15_path, tiny_set, "pairs_per_step=3", "gradient_accumulation_steps=2") == 2
    assert "use a multiple of 2" in capsys.readouterr().err
    _nothing_written(tmp_path)
