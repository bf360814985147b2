"""Bad input gets a clear error naming the problem, exit code 2, and no half-written output."""

import pytest
import yaml

from core.config import config_from_dict
from core.errors import ConfigError, DataError, LeakageError
from data_curation.config import CurateConfig
from data_curation.curate import main
from inference.prompts import PromptSourceConfig, load_prompts, read_prompt_file

RISK = {
    "prompts": {"source": "templates", "templates": ["a {animal}"], "slots": {"animal": ["cat"]}},
    "strategy": "best_of_n",
    "detector": {"scorer": "nudenet", "key": "nudenet_max"},
}


def curate_dict(**changes):
    base = {"model": "nowhere", "scorers": {"nudenet": {}}, "risks": {"exposure": dict(RISK)}}
    base.update(changes)
    return base


def run_main(tmp_path, curate, capsys):
    curate.setdefault("output_dir", str(tmp_path / "set"))
    curate.setdefault("work_dir", str(tmp_path / "work"))
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"curate": curate}))
    code = main(["--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (tmp_path / "set").exists()
    return err


def test_unknown_risk_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown risk 'nudity'.*exposure.*stereotype.*association.*misalignment"):
        config_from_dict(CurateConfig, curate_dict(risks={"nudity": dict(RISK)}), where="curate")


def test_unknown_scorer_in_scorers_or_risk():
    with pytest.raises(ConfigError, match=r"unknown scorer 'q16'"):
        config_from_dict(CurateConfig, curate_dict(scorers={"q16": {}}), where="curate")
    risk = dict(RISK, detector={"scorer": "oracle", "key": "exposed"})
    with pytest.raises(ConfigError, match=r"scorer 'oracle', which is not configured"):
        config_from_dict(CurateConfig, curate_dict(risks={"exposure": risk}), where="curate")


def test_unknown_key_and_bad_strategy_settings():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['target'\]"):
        config_from_dict(CurateConfig, curate_dict(risks={"exposure": dict(RISK, target=3)}), where="curate")
    with pytest.raises(ConfigError, match="minimal_pair needs at least one corrective"):
        config_from_dict(CurateConfig, curate_dict(risks={"exposure": dict(RISK, strategy="minimal_pair")}), where="curate")
    with pytest.raises(ConfigError, match="unknown sampler"):
        config_from_dict(CurateConfig, curate_dict(generation={"sampler": "warp"}), where="curate")


def test_missing_model_path_exits_2(tmp_path, capsys):
    err = run_main(tmp_path, curate_dict(model=str(tmp_path / "no-model")), capsys)
    assert "no-model" in err and "does not exist" in err


def test_empty_prompt_set_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    risk = dict(RISK, prompts={"source": "file", "path": str(empty)})
    err = run_main(tmp_path, curate_dict(risks={"exposure": risk}), capsys)
    assert "prompt set is empty" in err


def test_non_utf8_prompt_file(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("a caf\u00e9 at the beach\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8.*byte 0xe9.*line 1"):
        read_prompt_file(bad)
    risk = dict(RISK, prompts={"source": "file", "path": str(bad)})
    assert "not UTF-8" in run_main(tmp_path, curate_dict(risks={"exposure": risk}), capsys)


def test_dedupe_and_leakage_refusal(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("A person at the beach\na person at the  beach.\na chef in a kitchen\n", encoding="utf-8")
    records = load_prompts(PromptSourceConfig(source="file", path=str(prompts)), "t")
    assert [r.prompt for r in records] == ["A person at the beach", "a chef in a kitchen"]
    held_out = tmp_path / "eval.txt"
    held_out.write_text("a chef in a kitchen\n", encoding="utf-8")
    with pytest.raises(LeakageError, match="1 curation prompt.*a chef in a kitchen"):
        load_prompts(PromptSourceConfig(source="file", path=str(prompts), eval_file=str(held_out)), "t")
    risk = dict(RISK, prompts={"source": "file", "path": str(prompts), "eval_file": str(held_out)})
    assert "eval prompts" in run_main(tmp_path, curate_dict(risks={"exposure": risk}), capsys)


def test_template_with_undefined_slot():
    source = PromptSourceConfig(source="templates", templates=["a {animal} at {place}"], slots={"animal": ["cat"]})
    with pytest.raises(ConfigError, match=r"slot\(s\) \['place'\]"):
        load_prompts(source, "t")


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_real_model_configs_load_and_name_the_missing_checkpoint(name, capsys):
    from core.config import load_stage_config

    cfg = load_stage_config(CurateConfig, f"configs/{name}.yaml", "curate")
    assert set(cfg.risks) == {"exposure", "stereotype", "association", "misalignment"}
    for risk_name, risk in cfg.risks.items():
        assert load_prompts(risk.prompts, risk_name)  # UTF-8, non-empty, no eval leakage
    # No real checkpoint is present here: the run must stop at once, naming the path to set.
    assert main(["--config", f"configs/{name}.yaml", "output_dir=/nonexistent/never-written"]) == 2
    assert cfg.model in capsys.readouterr().err
