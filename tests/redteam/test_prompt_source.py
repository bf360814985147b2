"""The curation prompt source ``redteam``: it reads a make redteam output folder, deduplicates, refuses prompts that
ask for their risk, and never lets an eval prompt of any split (text or held-out slot combination) into curation."""

from __future__ import annotations

import json

import pytest

from core import plugins
from core.errors import ConfigError, DataError, LeakageError
from inference.prompts import PromptSourceConfig, load_prompts
from synthetic_world import prompts as world_prompts

plugins.load_plugin("redteam.plugin")


def _folder(tmp_path, records, suite="synthetic"):
    folder = tmp_path / "redteam"
    folder.mkdir()
    (folder / "found_prompts.json").write_text(json.dumps({"suite": suite, "count": len(records)}))
    (folder / "found_prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _source(folder, family=None):
    return PromptSourceConfig(source="redteam", path=str(folder), family=family)


CURATION = world_prompts.prompt_records(family="neutral", split="curation")


def test_found_prompts_load_deduplicated_and_by_risk(tmp_path):
    a = CURATION[0]["prompt"] + ", at the beach"
    b = CURATION[1]["prompt"] + ", at a party"
    c = "a mirdan chef in a kitchen, at a party, holding a cup"  # two settings: no combination of the world
    folder = _folder(tmp_path, [{"prompt": a, "risk": "exposure"}, {"prompt": a.upper(), "risk": "exposure"},
                                {"prompt": b, "risk": "exposure"}, {"prompt": c, "risk": "association"}])
    records = load_prompts(_source(folder), "curate.risks.exposure.prompts")
    assert [r.prompt for r in records] == [a, b, c] and records[0].source == "redteam"
    assert [r.prompt for r in load_prompts(_source(folder, "association"), "x")] == [c]
    # the source is looked up by name, and a folder name or its prompt file both work as the path
    assert [r.prompt for r in load_prompts(_source(folder / "found_prompts.txt", "association"), "x")] == [c]


@pytest.mark.parametrize("family", ["neutral", "exposure", "association", "symbol_request"])
def test_an_eval_prompt_of_any_split_is_refused(tmp_path, family):
    in_grammar = world_prompts.prompt_records(family=family, split="eval")[3]["prompt"]
    shifted = world_prompts.shift_records(family)[3]["prompt"]
    for i, leaked in enumerate((in_grammar, shifted)):
        risk = "association" if "symbol" in family else "exposure"
        ok = {"prompt": CURATION[2]["prompt"] + ", smiling", "risk": "exposure"}
        (tmp_path / f"ok{i}").mkdir()
        assert load_prompts(_source(_folder(tmp_path / f"ok{i}", [ok])), "x")  # the clean one alone loads
        (tmp_path / f"{i}").mkdir()
        folder = _folder(tmp_path / f"{i}", [ok, {"prompt": leaked, "risk": risk}])
        if "symbol" in family:  # a symbol request asks for its risk: refused before the leakage check
            with pytest.raises((DataError, LeakageError)):
                load_prompts(_source(folder), "curate.risks.x.prompts")
            continue
        with pytest.raises(LeakageError, match="eval split"):
            load_prompts(_source(folder), "curate.risks.x.prompts")


def test_a_held_out_slot_combination_is_refused_in_new_wording(tmp_path):
    held = next(r for r in world_prompts.prompt_records(family="neutral", split="eval")
                if r["template_id"] not in world_prompts.EVAL_ONLY_TEMPLATES)
    reworded = "  " + held["prompt"].upper() + " "
    folder = _folder(tmp_path, [{"prompt": reworded, "risk": "exposure"}])
    with pytest.raises(LeakageError):
        load_prompts(_source(folder), "curate.risks.exposure.prompts")


def test_a_prompt_asking_for_its_risk_is_refused(tmp_path):
    folder = _folder(tmp_path, [{"prompt": "a person, shirtless, in an office", "risk": "exposure"}])
    with pytest.raises(DataError, match="ask for their risk"):
        load_prompts(_source(folder), "curate.risks.exposure.prompts")


def test_bad_sources_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs prompts.path"):
        PromptSourceConfig(source="redteam").validate()
    with pytest.raises(DataError, match="make redteam output folder"):
        load_prompts(_source(tmp_path), "x")
    folder = _folder(tmp_path, [{"prompt": "a person", "risk": "exposure"}])
    with pytest.raises(ConfigError, match="no risk"):
        load_prompts(_source(folder, "nope"), "x")
    record = load_prompts(_source(folder), "x")[0]
    with pytest.raises(ConfigError, match="cannot be rewritten"):
        record.render({"setting": "beach"})
