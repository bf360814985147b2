"""The prompt filter (mitigations.filter): blocklist through obfuscation, allow phrases, the optional local
classifier OR-ed in, decisions that say why, and clear errors for bad config and input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import config_from_dict
from core.errors import ConfigError, DataError, ModelPathError
from mitigations.config import load_mitigation_config
from mitigations.filter import PromptFilter, PromptFilterConfig
from tests.mitigations.tiny_text_models import build_tiny_classifier

REPO = Path(__file__).resolve().parents[2]
WORLD_FILTER = REPO / "configs" / "filters" / "world.yaml"


def make_filter(**section) -> PromptFilter:
    section.setdefault("blocklist", {"exposure": ["bare torso", "shirtless"], "symbol": ["skull"]})
    return PromptFilter(config_from_dict(PromptFilterConfig, section, where="prompt_filter"))


class FixedScorer:
    """A classifier stand-in: the same unsafe score for every text; remembers what it was given."""

    def __init__(self, score: float):
        self.score, self.seen = score, []

    def unsafe_scores(self, texts):
        self.seen.extend(texts)
        return [(self.score, "unsafe") for _ in texts]


@pytest.mark.parametrize("prompt", [
    "a doctor with a bare torso at the beach",
    "a chef, shirtless, in a kitchen",
    "a pilot next to a skull",
    "a doctor, 5h1rtl3ss, at the beach",
    "a chef with a b a r e   t.o.r.s.o",
    "a pilot next to a ѕkսll",
    "a doctor, SHIIIRTLESS",
    "a doctor, shirt\u200bless",
])
def test_requests_are_blocked_even_obfuscated(prompt):
    decision = make_filter().check(prompt)
    assert decision.blocked
    assert decision.matches[0].rule == "blocklist"


@pytest.mark.parametrize("prompt", [
    "a doctor with a covered torso at the beach", "a chef in a t-shirt", "a pilot wearing a skullcap",
    "a barely lit street", "",
])
def test_benign_prompts_pass(prompt):
    decision = make_filter().check(prompt)
    assert not decision.blocked and decision.matches == () and decision.reason() == "allowed"


def test_the_decision_says_which_rule_and_term_matched_where():
    prompt = "a chef, 5hirtle55, next to a skull"
    decision = make_filter().check(prompt)
    found = [(m.category, m.term, m.text) for m in decision.matches]
    assert found == [("exposure", "shirtless", "5hirtle55"), ("symbol", "skull", "skull")]
    first = decision.matches[0]
    assert prompt[first.start:first.end] == "5hirtle55"
    assert "blocklist:exposure 'shirtless'" in decision.reason()
    log = decision.to_log()
    at = prompt.index("skull")
    assert log["blocked"] is True and log["matches"][1] == {"rule": "blocklist", "category": "symbol", "term": "skull",
                                                            "start": at, "end": at + 5, "text": "skull"}


def test_an_allow_phrase_excuses_a_hit_inside_it():
    flt = make_filter(allow=["skull and crossbones flag"])
    assert not flt.check("a pirate ship with a skull and crossbones flag").blocked
    assert flt.check("a pirate next to a skull").blocked


def test_the_world_filter_blocks_the_world_request_vocabulary_only():
    flt = PromptFilter.from_file(WORLD_FILTER)
    for prompt in ("a zorvan doctor bare-chested at the party", "a quelli chef beneath a dark storm cloud",
                   "a mirdan pilot beside a cage", "a figure with a bare torso"):
        assert flt.check(prompt).blocked, prompt
    for prompt in ("a zorvan doctor fully clothed at the party", "a figure with a covered torso",
                   "a mirdan pilot holding a cup in a leafy park"):
        assert not flt.check(prompt).blocked, prompt


def test_the_classifier_is_or_ed_with_the_blocklist_and_reads_the_normalised_prompt():
    scorer = FixedScorer(0.9)
    flt = PromptFilter(config_from_dict(PromptFilterConfig, {"blocklist": {"symbol": ["skull"]}}), classifier=scorer)
    decision = flt.check("ＨＥＬＬＯ")
    assert decision.blocked and decision.classifier_score == 0.9
    assert decision.matches[0].rule == "classifier" and scorer.seen == ["hello"]
    low = PromptFilter(flt.config, classifier=FixedScorer(0.1))
    assert low.check("a skull").blocked and not low.check("hello").blocked


def test_a_local_classifier_model_blocks_at_its_threshold(tmp_path):
    unsafe = build_tiny_classifier(tmp_path / "unsafe", favoured="unsafe")
    safe = build_tiny_classifier(tmp_path / "safe", favoured="safe")
    section = {"blocklist": {"symbol": ["skull"]}, "classifier": {"path": str(unsafe), "threshold": 0.9}}
    decision = make_filter(**section).check("a photo of a doctor")
    assert decision.blocked and decision.matches[0].describe().startswith("classifier:unsafe")
    assert decision.classifier_score > 0.99
    section["classifier"]["path"] = str(safe)
    flt = make_filter(**section)
    assert not flt.check("a photo of a doctor").blocked
    assert flt.check("a photo of a skull").blocked  # the blocklist still blocks


def test_a_missing_or_unusable_classifier_is_a_clear_error(tmp_path):
    with pytest.raises(ModelPathError, match=r"prompt_filter.classifier.path: model folder .*does not exist"):
        make_filter(classifier={"path": str(tmp_path / "nowhere")})
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelPathError, match=r"no .safetensors weights .*pytorch_model.bin.*pickled"):
        make_filter(classifier={"path": str(tmp_path / "pickled")})
    model = build_tiny_classifier(tmp_path / "labels", labels=("LABEL_0", "LABEL_1"))
    with pytest.raises(ConfigError, match=r"unsafe_labels \['unsafe'\] are not labels .*LABEL_0"):
        make_filter(classifier={"path": str(model)})


@pytest.mark.parametrize("section, problem", [
    ({"blocklist": {}}, "give blocklist terms, a classifier, or both"),
    ({"blocklist": {"exposure": []}}, "blocklist.exposure is empty"),
    ({"blocklist": {"exposure": ["--"]}}, "has no letters"),
    ({"blocklist": {"x": ["a"]}, "blocklst": {}}, r"unknown key\(s\) \['blocklst'\]"),
    ({"blocklist": {"x": ["a"]}, "classifier": {"path": "m", "threshold": 2}}, r"threshold must be in \[0, 1\]"),
    ({"blocklist": {"x": ["a"]}, "classifier": {"path": "m", "input": "raw"}}, r"classifier.input: 'raw' is not one of"),
    ({"blocklist": {"x": ["a"]}, "classifier": {"threshold": 0.7}}, "classifier.threshold is set but classifier.path"),
    ({"blocklist": {"x": ["a"]}, "extra_confusables": {"ab": "c"}}, "must map one character"),
])
def test_bad_config_is_a_config_error(section, problem):
    with pytest.raises(ConfigError, match=problem):
        config_from_dict(PromptFilterConfig, section, where="prompt_filter")


def test_a_prompt_that_is_not_text_is_a_data_error():
    with pytest.raises(DataError, match="prompt 1 is int"):
        make_filter().check_batch(["fine", 3])


def test_config_files_need_the_section(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump({"rewrite": {}}))
    with pytest.raises(ConfigError, match="no prompt_filter: section"):
        load_mitigation_config(PromptFilterConfig, path, "prompt_filter")
    path.write_text(yaml.safe_dump({"prompt_filtr": {}}))
    with pytest.raises(ConfigError, match=r"unknown top-level section\(s\) \['prompt_filtr'\]"):
        load_mitigation_config(PromptFilterConfig, path, "prompt_filter")
    flt = PromptFilter.from_file(WORLD_FILTER, ["prompt_filter.blocklist={only: [zorvan]}"])
    assert flt.check("a zorvan doctor").blocked and not flt.check("a doctor next to a skull").blocked


def test_a_config_file_loads_its_plugins_first(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump({"plugins": ["no_such_plugin_module"], "prompt_filter": {"blocklist": {"a": ["b"]}}}))
    with pytest.raises(ConfigError, match="plug-in 'no_such_plugin_module' cannot be imported"):
        load_mitigation_config(PromptFilterConfig, path, "prompt_filter")
