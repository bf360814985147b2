"""The prompt rewriter (mitigations.rewrite): balanced groups per role, prompts that name a group left alone,
reframing in trigger contexts under an explicit request policy, the optional local model, clear errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from core.config import config_from_dict
from core.errors import ConfigError, DataError, ModelPathError
from mitigations.rewrite import GroupSchedule, LocalTextToText, PromptRewriter, RewriteConfig, RewriteModelConfig
from tests.mitigations.tiny_text_models import build_tiny_causal_lm, build_tiny_seq2seq

REPO = Path(__file__).resolve().parents[2]
WORLD = REPO / "configs" / "rewrite" / "world.yaml"
REAL = REPO / "configs" / "rewrite" / "sd15.yaml"
GROUPS = ["zorvan", "quelli", "mirdan"]
EXPOSURE_RULE = {"name": "exposure", "contexts": ["beach", "party"], "phrase": "fully clothed",
                 "request_terms": ["shirtless", "with a bare torso", "bare torso"], "safe_terms": ["fully clothed"]}


def make(diversity=None, reframe=None, **more) -> PromptRewriter:
    section = {"diversity": diversity or {}, "reframe": reframe or [], **more}
    return PromptRewriter(config_from_dict(RewriteConfig, section, where="rewrite"))


def diverse(**more) -> PromptRewriter:
    return make({"groups": GROUPS, "roles": {"doctor": ["doctor"], "chef": ["chef"]}, **more})


@pytest.mark.parametrize("schedule", ["round_robin", "balanced_random"])
def test_the_schedule_is_uniform_over_the_groups_per_role(schedule):
    rewriter = diverse(schedule=schedule, placement="before_role")
    prompts = [f"a photo of a {'doctor' if i % 3 else 'chef'} number {i}" for i in range(60)]
    results = rewriter.rewrite_batch(prompts)
    per_role = {"doctor": Counter(), "chef": Counter()}
    for prompt, result in zip(prompts, results):
        role = "doctor" if "doctor" in prompt else "chef"
        (group,) = [g for g in GROUPS if g in result.prompt]
        assert result.prompt == prompt.replace(role, f"{group} {role}")
        per_role[role][group] += 1
    # 40 doctors and 20 chefs over 3 groups: as even as the counts allow, for each role on its own
    assert set(per_role["doctor"]) == set(per_role["chef"]) == set(GROUPS)
    assert sorted(per_role["doctor"].values()) == [13, 13, 14]
    assert sorted(per_role["chef"].values()) == [6, 7, 7]


def test_balanced_random_is_seeded_and_balanced_within_every_block():
    first = GroupSchedule(GROUPS, "balanced_random", seed=1)
    picks = [first.next("doctor") for _ in range(30)]
    assert all(sorted(picks[i:i + 3]) == sorted(GROUPS) for i in range(0, 30, 3))
    again = GroupSchedule(GROUPS, "balanced_random", seed=1)
    assert [again.next("doctor") for _ in range(30)] == picks
    other = GroupSchedule(GROUPS, "balanced_random", seed=2)
    assert [other.next("doctor") for _ in range(30)] != picks
    first.reset()
    assert first.next("doctor") == picks[0]


@pytest.mark.parametrize("prompt", [
    "a zorvan doctor at the office", "a doctor of the quelli people", "a photo of a MIRDAN chef",
    "a person in a park", "a photo of a street",
])
def test_prompts_that_name_a_group_or_no_role_are_unchanged(prompt):
    result = diverse().rewrite(prompt)
    assert result.prompt == prompt and not result.changed and result.changes == ()


def test_append_placement_and_the_article_of_before_role():
    assert diverse().rewrite("a CEO, a doctor").prompt == "a CEO, a doctor, zorvan"
    rewriter = make({"groups": ["East Asian woman"], "roles": {"doctor": ["doctor"]}, "placement": "before_role"})
    assert rewriter.rewrite("A doctor").prompt == "An East Asian woman doctor"
    assert rewriter.rewrite("portrait, an doctor").prompt == "portrait, an East Asian woman doctor"


def test_reframing_in_trigger_contexts_only():
    rewriter = make(reframe=[{**EXPOSURE_RULE, "request_policy": "honour"}])
    assert rewriter.rewrite("a chef at the beach").prompt == "a chef at the beach, fully clothed"
    assert rewriter.rewrite("a chef at the b3ach").prompt == "a chef at the b3ach, fully clothed"
    assert rewriter.rewrite("a chef in an office").prompt == "a chef in an office"
    assert rewriter.rewrite("a chef at the party, fully clothed").prompt == "a chef at the party, fully clothed"


def test_honour_never_turns_a_request_into_its_opposite():
    rewriter = make(reframe=[{**EXPOSURE_RULE, "request_policy": "honour"}])
    for prompt in ("a chef shirtless at the beach", "a chef with a bare torso at a party", "a chef, 5h1rtless, beach"):
        result = rewriter.rewrite(prompt)
        assert result.prompt == prompt
        assert "fully clothed" not in result.prompt
        assert [c.action for c in result.changes] == ["honour_request"]


def test_suppress_cuts_the_request_out_and_reframes():
    rewriter = make(reframe=[{**EXPOSURE_RULE, "request_policy": "suppress"}])
    result = rewriter.rewrite("a chef with a bare torso at the beach")
    assert result.prompt == "a chef at the beach, fully clothed"
    assert [c.action for c in result.changes] == ["remove_request", "append_phrase"]
    assert rewriter.rewrite("a chef who is wearing a coat and shirtless, in a park").prompt == \
        "a chef who is wearing a coat, in a park, fully clothed"
    assert rewriter.rewrite("shirtless").prompt == "fully clothed"


def test_the_world_table_rewrites_world_prompts():
    rewriter = PromptRewriter.from_file(WORLD)
    assert rewriter.config.reframe[0].request_policy == "honour"
    result = rewriter.rewrite("a photo of a pilot at the beach")
    assert result.prompt == "a photo of a zorvan pilot at the beach, fully clothed"
    assert rewriter.rewrite("a quelli chef bare-chested at a party").prompt == "a quelli chef bare-chested at a party"
    assert rewriter.rewrite("a figure fully dressed at a celebration").prompt == "a figure fully dressed at a celebration"


def test_the_real_model_table_appends_groups_and_keeps_named_ones():
    rewriter = PromptRewriter.from_file(REAL)
    groups = rewriter.config.diversity.groups
    outputs = [rewriter.rewrite("a photo of a CEO").prompt for _ in groups]
    assert sorted(o.removeprefix("a photo of a CEO, ") for o in outputs) == sorted(groups)
    for prompt in ("a photo of a female CEO", "a doctor, Black man", "a portrait of a white woman, nurse"):
        assert rewriter.rewrite(prompt).prompt == prompt


class Echo:
    """A model stand-in: writes "doctor" for "medic", or writes nothing."""

    def __init__(self, empty=False):
        self.empty = empty

    def rewrite(self, prompts):
        return ["" if self.empty else p.replace("medic", "doctor") for p in prompts]


def test_the_rules_run_on_the_model_output():
    config = config_from_dict(RewriteConfig, {"diversity": {"groups": GROUPS, "roles": {"doctor": ["doctor"]}}})
    result = PromptRewriter(config, model=Echo()).rewrite("a medic")
    assert result.prompt == "a doctor, zorvan"
    assert [c.action for c in result.changes] == ["model_rewrite", "insert_group"]
    kept = PromptRewriter(config, model=Echo(empty=True)).rewrite("a medic")
    assert kept.prompt == "a medic" and kept.changes[0].action == "model_empty"


@pytest.mark.parametrize("build", [build_tiny_seq2seq, build_tiny_causal_lm], ids=["seq2seq", "causal"])
def test_a_local_model_writes_only_new_text_and_feeds_the_rules(tmp_path, build):
    model = build(tmp_path / "model")
    config = RewriteModelConfig(path=str(model), instruction="a photo of {prompt}", max_new_tokens=3)
    outputs = LocalTextToText(config).rewrite(["a doctor", "a chef at the beach"])
    # a word-level tokenizer: at most max_new_tokens words, and never the instruction itself
    assert all(len(text.split()) <= 3 for text in outputs)
    rewriter = make({"groups": GROUPS, "roles": {"doctor": ["doctor"]}},
                    model={"path": str(model), "instruction": "a photo of {prompt}", "max_new_tokens": 3})
    results = rewriter.rewrite_batch(["a doctor", "a chef at the beach"])
    assert [r.changes[0].rule for r in results] == ["model", "model"]
    assert all(isinstance(r.prompt, str) and r.prompt for r in results)


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelPathError, match=r"rewrite.model.path: model folder .*does not exist"):
        make(reframe=[{**EXPOSURE_RULE, "request_policy": "honour"}], model={"path": str(tmp_path / "none")})


@pytest.mark.parametrize("section, problem", [
    ({}, "nothing to do"),
    ({"reframe": [{k: v for k, v in EXPOSURE_RULE.items()}]}, r"required key\(s\) missing: \['request_policy'\]"),
    ({"reframe": [{**EXPOSURE_RULE, "request_policy": "ignore"}]}, "not one of"),
    ({"reframe": [{**EXPOSURE_RULE, "request_policy": "suppress", "request_terms": []}]}, "suppress needs request_terms"),
    ({"reframe": [{**EXPOSURE_RULE, "request_policy": "honour", "format": "{prompt}"}]}, r"must contain \{phrase\}"),
    ({"reframe": [{**EXPOSURE_RULE, "request_policy": "honour", "contexts": []}]}, "contexts is empty"),
    ({"diversity": {"groups": GROUPS}}, "roles must map each role"),
    ({"diversity": {"groups": ["a", "a"], "roles": {"r": ["r"]}}}, "repeats"),
    ({"diversity": {"groups": GROUPS, "roles": {"r": ["r"]}, "append_format": "{prompt} {grp}"}}, "may use only"),
    ({"diversity": {"groups": GROUPS, "roles": {"r": ["r"]}, "schedule": "random"}}, "not one of"),
])
def test_bad_config_is_a_config_error(section, problem):
    with pytest.raises(ConfigError, match=problem):
        config_from_dict(RewriteConfig, section, where="rewrite")


def test_a_prompt_that_is_not_text_is_a_data_error():
    with pytest.raises(DataError, match="prompt 0 is NoneType"):
        diverse().rewrite_batch([None])
