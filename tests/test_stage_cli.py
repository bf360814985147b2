"""Every stage's command line: --help lists every config key with its help text, every field of every stage config
has one, and keys renamed so that one thing has one name across stages still load under their old names."""

from __future__ import annotations

import importlib
import typing
import warnings
from pathlib import Path

import pytest

from core.cli import StageCLI, config_key_docs
from core.config import KNOWN_SECTIONS, config_from_dict, load_stage_config, read_yaml
from core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Entry-point module -> the argv prefix that reaches its stage config's --help.
STAGES = {
    "data_curation.curate": [],
    "training.train": [],
    "evals.evaluate": [],
    "annotation.cli": ["serve"],
    "benchmarks.bench": [],
}


def stage_cli(module: str) -> StageCLI:
    cli = importlib.import_module(module).CLI
    assert isinstance(cli, StageCLI)
    return cli


def test_the_stage_config_classes():
    from annotation.config import AnnotateConfig
    from benchmarks.config import BenchConfig
    from data_curation.config import CurateConfig
    from evals.config import EvalConfig
    from training.config import TrainConfig

    assert [stage_cli(m).cls for m in STAGES] == [CurateConfig, TrainConfig, EvalConfig, AnnotateConfig, BenchConfig]
    assert [stage_cli(m).section for m in STAGES] == ["curate", "train", "eval", "annotate", "bench"]


@pytest.mark.parametrize("module", list(STAGES))
def test_every_config_field_has_help(module):
    docs = config_key_docs(stage_cli(module).cls)
    missing = [doc.key for doc in docs if len(doc.help) < 8]
    assert not missing, f"fields without metadata help: {missing}"


def test_shared_dataclasses_are_documented_where_they_are_used():
    keys = {doc.key for doc in config_key_docs(stage_cli("data_curation.curate").cls)}
    # inference.prompts.PromptSourceConfig and inference.speedups.InferenceSpeedups
    assert {"risks.<name>.prompts.source", "retain.extra_prompts[].where", "generation.speedups.fuse_qkv"} <= keys
    keys = {doc.key for doc in config_key_docs(stage_cli("evals.evaluate").cls)}
    assert {"generation.speedups.coordinate_descent_tuning", "i2p.csv", "filter.max_retries"} <= keys


def test_curate_and_eval_share_one_generation_section():
    from data_curation.config import CurateConfig
    from evals.config import EvalConfig
    from inference.config import GenerationConfig

    def generation_keys(cls):
        return [(d.key, d.type, d.default, d.help) for d in config_key_docs(cls) if d.key.startswith("generation.")]

    assert typing.get_type_hints(CurateConfig)["generation"] is GenerationConfig
    assert typing.get_type_hints(EvalConfig)["generation"] is GenerationConfig
    assert generation_keys(CurateConfig) == generation_keys(EvalConfig)
    assert {"generation.steps", "generation.batch_size", "generation.speedups.compile_unet"} <= {
        key for key, *_ in generation_keys(EvalConfig)}


def test_eval_generation_keys_moved_into_the_generation_section():
    from evals.config import EvalConfig

    required = {"mode": "synthetic", "model": "m", "clip_path": "c"}
    with pytest.warns(FutureWarning, match=r"eval\.steps is deprecated, use eval\.generation\.steps"):
        cfg = config_from_dict(EvalConfig, {**required, "steps": 7, "generation": {"sampler": "euler"}}, where="eval")
    assert (cfg.generation.steps, cfg.generation.sampler) == (7, "euler")
    with pytest.warns(FutureWarning, match=r"fast_paths is deprecated, use generation\.fast_paths"):
        cfg = config_from_dict(EvalConfig, required, ["fast_paths=false", "speedups.compile_vae=false"])
    assert cfg.generation.fast_paths is False and cfg.generation.speedups.compile_vae is False
    with pytest.raises(ConfigError, match=r"eval\.guidance is the old name of eval\.generation\.guidance"):
        config_from_dict(EvalConfig, {**required, "guidance": 2.0, "generation": {"guidance": 3.0}}, where="eval")
    assert "steps" not in {doc.key for doc in config_key_docs(EvalConfig)}


@pytest.mark.parametrize("module", list(STAGES))
def test_help_prints_every_key_with_its_help(module, capsys):
    entry = importlib.import_module(module)
    with pytest.raises(SystemExit) as exit_info:
        entry.main([*STAGES[module], "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for doc in config_key_docs(stage_cli(module).cls):
        flag = doc.key if "[]" in doc.key else f"--{doc.key}"
        assert f"{flag} ({doc.type}" in out, doc.key
        assert " ".join(doc.help.split()) in out, doc.key


def test_eval_model_and_lora_have_the_names_curate_and_train_use():
    from evals.config import EvalConfig

    with pytest.warns(FutureWarning, match=r"eval\.model_path is deprecated, use eval\.model"):
        cfg = config_from_dict(EvalConfig, {"mode": "synthetic", "model_path": "some/model", "clip_path": "c"},
                               where="eval")
    assert cfg.model == "some/model"
    with pytest.warns(FutureWarning, match=r"lora_dir is deprecated, use lora"):
        cfg = config_from_dict(EvalConfig, {"mode": "synthetic", "model": "m", "clip_path": "c"},
                               ["lora_dir=runs/x/lora"])
    assert cfg.lora == "runs/x/lora"
    assert "model_path" not in {doc.key for doc in config_key_docs(EvalConfig)}


@pytest.mark.parametrize("module", ["data_curation.curate", "training.train", "evals.evaluate"])
def test_a_config_without_a_model_names_the_missing_key(module):
    cli = stage_cli(module)
    with pytest.raises(ConfigError, match=rf"{cli.section}: required key\(s\) missing: \[.*'model'"):
        config_from_dict(cli.cls, {}, where=cli.section)


def test_train_tensorboard_became_report_to():
    from training.config import TrainConfig

    with pytest.warns(FutureWarning, match=r"tensorboard is deprecated, use report_to"):
        assert config_from_dict(TrainConfig, {"model": "m"}, ["tensorboard=false"]).report_to == "none"
    with pytest.warns(FutureWarning):
        assert config_from_dict(TrainConfig, {"model": "m", "tensorboard": True}).report_to == "tensorboard"


STAGE_OF_SECTION = {stage_cli(m).section: m for m in STAGES}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_configs_use_the_current_key_names(path):
    sections = [s for s in read_yaml(path) if s in STAGE_OF_SECTION]
    assert set(read_yaml(path)) <= set(KNOWN_SECTIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # an old key name fails here
        for section in sections:
            load_stage_config(stage_cli(STAGE_OF_SECTION[section]).cls, path, section, validate=False)
