"""Which eval-split prompts the synthetic-world eval uses (fast: no model)."""

from collections import Counter

from synthetic_world.eval_suite import _spread_by_slot, world_eval_records


def test_stereotype_eval_prompts_are_stratified_by_role():
    """The stereotype metric averages a max share per role: every role gets the same number of
    prompts (±1), none of them naming a group."""
    records = world_eval_records(["stereotype"], 32)
    roles = Counter(r["slots"]["role"] for r in records)
    assert sum(roles.values()) == 32 and len(roles) == 5
    assert max(roles.values()) - min(roles.values()) <= 1
    assert all("group" not in r["slots"] for r in records)
    assert len({r["prompt"] for r in records}) == 32


def test_spread_by_slot_splits_evenly_and_skips_empty_shares():
    pool = [{"slots": {"role": role}, "i": i} for role in ("a", "b", "c") for i in range(10)]
    picked = _spread_by_slot(pool, 7, "role")
    assert Counter(r["slots"]["role"] for r in picked) == {"a": 3, "b": 2, "c": 2}
    assert Counter(r["slots"]["role"] for r in _spread_by_slot(pool, 2, "role")) == {"a": 1, "b": 1}


def test_other_families_are_unchanged_by_the_stratification():
    records = world_eval_records(["exposure", "neutral"], 8)
    assert Counter(r["family"] for r in records) == {"exposure": 8, "neutral": 8}


def test_family_prompts_replace_the_count_for_the_families_named():
    records = world_eval_records(["stereotype", "neutral"], 8, {"stereotype": 80})
    counts = Counter(r["family"] for r in records)
    assert counts == {"stereotype": 80, "neutral": 8}
    roles = Counter(r["slots"]["role"] for r in records if r["family"] == "stereotype")
    assert set(roles.values()) == {16}  # still stratified by role
    # the first 8-per-family selection is unchanged by the override of the other family
    assert [r for r in records if r["family"] == "neutral"] == world_eval_records(["neutral"], 8)


def test_family_prompts_must_name_evaluated_families_and_positive_counts():
    import pytest

    from core.config import config_from_dict
    from core.errors import ConfigError
    from evals.config import EvalConfig

    required = {"mode": "synthetic", "model": "m", "clip_path": "c"}
    with pytest.raises(ConfigError, match="stereotypes"):
        config_from_dict(EvalConfig, {**required, "family_prompts": {"stereotypes": 80}})
    with pytest.raises((ConfigError, ValueError), match="family_prompts"):
        config_from_dict(EvalConfig, {**required, "family_prompts": {"stereotype": 0}})


def _curation_tasks(config_path):
    """(name, source) of every curation task as the curation stage itself reads them (CurateConfig.tasks())."""
    from core.config import load_stage_config
    from data_curation.config import CurateConfig

    cfg = load_stage_config(CurateConfig, config_path, "curate")
    return [(f"curate.risks.{name}", risk.prompts) for name, risk in cfg.tasks().items()]


def test_eval_reads_the_curation_prompt_sources_of_every_shipped_config_as_curation_does():
    """The leakage check reads the curate: section through the shared PromptSourceConfig: the same sources, in
    the same order and with the same names, as CurateConfig.tasks()."""
    from pathlib import Path

    from core.config import read_yaml
    from evals.prompt_sets import curation_prompt_sources

    checked = 0
    for path in sorted(Path("configs").glob("*.yaml")):
        if (read_yaml(path).get("curate") or {}).get("risks"):
            assert curation_prompt_sources(path) == _curation_tasks(path), path
            checked += 1
    assert checked >= 1


def test_curation_prompts_from_config_include_request_tasks_and_match_curation(tmp_path):
    import yaml

    from evals.prompt_sets import curation_prompt_sources, curation_prompts_from_config
    from inference.prompts import load_prompts

    corrective = [{"rewrite": "{prompt}, clothed"}]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"curate": {"model": "m", "scorers": {"oracle": {}}, "risks": {
        "exposure": {"prompts": {"source": "templates", "templates": ["a {role} at the beach"],
                                 "slots": {"role": ["chef", "pilot"]}},
                     "detector": {"scorer": "oracle", "key": "exposed"}, "corrective": corrective, "request_pairs": 3,
                     "request_prompts": {"source": "templates", "templates": ["a {role} with a bare torso"],
                                         "slots": {"role": ["chef"]}}},
        "association": {"prompts": {"source": "world", "family": "association"},
                        "detector": {"scorer": "oracle", "key": "symbol_present"}, "corrective": corrective},
    }}}, sort_keys=False))
    sources = curation_prompt_sources(config)
    assert [name for name, _ in sources] == ["curate.risks.exposure", "curate.risks.exposure_request",
                                             "curate.risks.association"]
    assert sources == _curation_tasks(config)
    prompts = curation_prompts_from_config(config)
    assert prompts == [r.prompt for name, source in _curation_tasks(config) for r in load_prompts(source, name)]
    assert prompts[:3] == ["a chef at the beach", "a pilot at the beach", "a chef with a bare torso"]
    assert curation_prompts_from_config(None) == []


def test_curation_prompt_sources_refuse_a_bad_prompt_source(tmp_path):
    import pytest
    import yaml

    from core.errors import ConfigError
    from evals.prompt_sets import curation_prompt_sources

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"curate": {"risks": {"exposure": {"prompts": {"source": "world", "famly": "x"}}}}}))
    with pytest.raises(ConfigError, match="famly"):
        curation_prompt_sources(config)
    config.write_text(yaml.safe_dump({"curate": {"risks": {"exposure": {"prompts": {"source": "world"}}}}}))
    with pytest.raises(ConfigError, match="needs prompts.family"):
        curation_prompt_sources(config)
