"""Output folders (core/output_dir.py) of the train and curate stages: a folder the project did not write is
never replaced without overwrite=true; the project's own folders are replaced and resumed into as before.
Also resume=latest without a checkpoint (a warning in the log) and a named checkpoint that is missing (an error)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from core.output_dir import MARKER, check_output_dir, has_marker
from tests.training.conftest import tiny_config
from training.lora import LORA_WEIGHT_NAME
from training.train import main, train


def _user_folder(folder: Path, files: int = 10) -> Path:
    """A folder of someone's own files (and a subfolder), as a user might point output_dir at by mistake."""
    (folder / "photos").mkdir(parents=True)
    (folder / "photos" / "holiday.png").write_bytes(b"not ours")
    for i in range(files):
        (folder / f"notes-{i:02d}.txt").write_text(f"note {i}")
    return folder


def _train_args(tmp_path: Path, model: Path, data: Path, *extra: str) -> list[str]:
    return [f"model={model}", f"data={data}", f"output_dir={tmp_path / 'out'}", f"work_dir={tmp_path / 'work'}",
            "mixed_precision=fp32", "max_train_steps=2", "micro_batch_size=2", "progress_bar=false",
            "report_to=none", *extra]


def test_check_output_dir_rules(tmp_path):
    check_output_dir(tmp_path / "new", False, "x.output_dir")  # missing: fine
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", False, "x.output_dir")
    user = _user_folder(tmp_path / "user")
    with pytest.raises(ConfigError) as caught:
        check_output_dir(user, False, "x.output_dir")
    message = str(caught.value)
    assert "x.output_dir" in message and "these 11 entries" in message and "overwrite=true" in message
    assert "  notes-00.txt" in message and "  photos/" in message and "... and 3 more" in message
    check_output_dir(user, True, "x.output_dir")  # asked for
    (user / MARKER).write_text("{}")
    check_output_dir(user, False, "x.output_dir")  # ours
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_output_dir(tmp_path / "file", True, "x.output_dir")
    with pytest.raises(ConfigError, match=r"x.work_dir \(.*\) lies inside x.output_dir"):
        check_output_dir(tmp_path / "new", True, "x.output_dir", keep=[("x.work_dir", tmp_path / "new" / "work")])


def test_train_refuses_a_folder_it_did_not_write_then_overwrites_on_request(tiny_sd15_path, tiny_set, tmp_path,
                                                                             capsys):
    user = _user_folder(tmp_path / "out")
    assert main(_train_args(tmp_path, tiny_sd15_path, tiny_set)) == 2
    err = capsys.readouterr().err
    assert "train.output_dir" in err and "notes-00.txt" in err and "overwrite=true" in err
    assert (user / "photos" / "holiday.png").read_bytes() == b"not ours" and len(list(user.iterdir())) == 11
    assert not (tmp_path / "work").exists()  # refused before anything ran
    assert main(_train_args(tmp_path, tiny_sd15_path, tiny_set, "overwrite=true")) == 0
    assert (user / LORA_WEIGHT_NAME).is_file() and has_marker(user) and not (user / "photos").exists()


def test_work_dir_inside_output_dir_is_refused(tiny_sd15_path, tiny_set, tmp_path, capsys):
    args = _train_args(tmp_path, tiny_sd15_path, tiny_set, f"work_dir={tmp_path / 'out' / 'work'}", "overwrite=true")
    assert main(args) == 2
    assert "train.work_dir" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_own_output_is_replaced_and_resumed_into(tiny_sd15_path, tiny_set, tmp_path):
    common = ("max_train_steps=3", "checkpoint_every=1", "keep_checkpoints=5")
    train(tiny_config(tiny_sd15_path, tiny_set, tmp_path, *common))
    out = tmp_path / "lora"
    assert has_marker(out) and (out / LORA_WEIGHT_NAME).is_file()
    summary = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path, *common, "resume=latest"))
    assert summary["resumed_from"].endswith("checkpoint-0000002")
    assert has_marker(out) and (out / LORA_WEIGHT_NAME).is_file()


def test_resume_latest_without_checkpoint_says_so(tiny_sd15_path, tiny_set, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="training.checkpoints"):
        summary = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path, "max_train_steps=1", "resume=latest"))
    assert summary["resumed_from"] is None
    expected = f"resume=latest: no checkpoint found in {tmp_path / 'work' / 'checkpoints'}; starting from step 0"
    assert any(expected in record.getMessage() for record in caplog.records), caplog.text


def test_named_checkpoint_that_is_missing_is_an_error(tiny_sd15_path, tiny_set, tmp_path, capsys):
    assert main(_train_args(tmp_path, tiny_sd15_path, tiny_set, f"resume={tmp_path / 'nope'}")) == 2
    assert "resume" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "not-a-checkpoint").mkdir()
    assert main(_train_args(tmp_path, tiny_sd15_path, tiny_set, f"resume={tmp_path / 'not-a-checkpoint'}")) == 2
    err = capsys.readouterr().err
    assert "not a checkpoint folder" in err and "resume=latest" in err and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- curation


def _curate_config(tmp_path: Path, model: Path, **extra) -> Path:
    """One best-of-N risk whose detector accepts every image, so pairs always form (plumbing only)."""
    detector = {"scorer": "nudenet", "key": "nudenet_max", "threshold": 0.0, "safe_below": 1.0}
    curate = {
        "model": str(model), "output_dir": str(tmp_path / "set"), "work_dir": str(tmp_path / "work"),
        "generation": {"steps": 2, "batch_size": 4}, "scorers": {"nudenet": {}}, "cross_risk_check": False,
        "process_split": "batches",
        "risks": {"association": {
            "prompts": {"source": "templates", "templates": ["a {animal} in the park"],
                        "slots": {"animal": ["cat", "dog"]}},
            "strategy": "best_of_n", "target_pairs": 2, "images_per_prompt": 2, "detector": detector,
        }},
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"curate": curate}))
    return path


def test_curate_refuses_a_folder_it_did_not_write_and_replaces_its_own(tiny_sd15_path, tmp_path, capsys):
    from data_curation.curate import main as curate

    config = _curate_config(tmp_path, tiny_sd15_path)
    user = _user_folder(tmp_path / "set", files=2)
    assert curate(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "curate.output_dir" in err and "notes-01.txt" in err and "overwrite=true" in err
    assert len(list(user.iterdir())) == 3 and not (tmp_path / "work").exists()  # nothing generated
    assert curate(["--config", str(config), "overwrite=true"]) == 0
    assert has_marker(user) and not (user / "photos").exists()
    assert curate(["--config", str(config)]) == 0  # our own set: replaced without asking, as before


def test_curate_refuses_a_foreign_retain_folder(tiny_sd15_path, tmp_path, capsys):
    from data_curation.curate import main as curate

    retain = {"prompts": {"source": "templates", "templates": ["a {animal}"], "slots": {"animal": ["cat"]}},
              "output_dir": str(tmp_path / "retain")}
    config = _curate_config(tmp_path, tiny_sd15_path, retain=retain)
    _user_folder(tmp_path / "retain", files=1)
    assert curate(["--config", str(config)]) == 2
    assert "curate.retain.output_dir" in capsys.readouterr().err
    assert not (tmp_path / "set").exists() and (tmp_path / "retain" / "notes-00.txt").is_file()
