"""The layered guarded generator (mitigations.stack) on the tiny random SD1.5 model: a blocked prompt is never
generated, the rewrite is what the model sees, a flag leads to guided regeneration on the same seed (or plain
regeneration on the eval's retry seeds), what stays flagged is blurred or refused, and every record is complete."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import mitigations.stack as stack_module
from core import plugins
from core.config import config_from_dict
from core.errors import ConfigError, DataError
from core.models import load_pipeline
from inference.config import GenerationConfig
from inference.generation import GenerationSpec, generate
from mitigations.filter import PromptFilter, PromptFilterConfig
from mitigations.moderation import FlagRule, ImageModerator, ModerationConfig
from mitigations.rewrite import PromptRewriter, RewriteConfig
from mitigations.stack import GuardedGenerator, StackConfig, blur_image, retry_seed

GENERATION = {"sampler": "ddim", "steps": 2, "guidance": 5.0, "batch_size": 4}
CONCEPTS = {"nudity": "nude", "cat": "cat"}
SEED = 11


class ScriptedScorer:
    """Flags images by the order they are scored in: ``script[i]`` is the set of flags of the i-th image (images
    past the end of the script carry ``default``)."""

    name = "scripted"

    def __init__(self, script=(), default=()):
        self.script, self.default, self.seen = [set(s) for s in script], set(default), 0

    def score(self, images, prompts=None):
        out = []
        for _ in images:
            flags = self.script[self.seen] if self.seen < len(self.script) else self.default
            self.seen += 1
            out.append({"scores": {"nudity": float("nudity" in flags)}, "labels": {"cat": "cat" in flags}})
        return out


class AlwaysNudeScorer(ScriptedScorer):
    """A scorer with options, for a moderation file that names it through the plug-in registry."""

    name = "always_nude"

    def __init__(self, level: float = 1.0):
        super().__init__(default={"nudity"} if level >= 0.5 else ())


plugins.register("scorer", "test_always_nude", AlwaysNudeScorer)


@pytest.fixture(scope="module")
def pipe(tiny_sd15_path):
    return load_pipeline(tiny_sd15_path)


def moderator(scorer: ScriptedScorer) -> ImageModerator:
    config = ModerationConfig(scorers={"clip": {}}, flags=[
        FlagRule("nudity", "clip", score="nudity", threshold=0.5), FlagRule("cat", "clip", label="cat")])
    return ImageModerator(config, scorers={"clip": scorer})


def prompt_filter() -> PromptFilter:
    return PromptFilter(PromptFilterConfig(blocklist={"explicit": ["nude"]}))


def rewriter() -> PromptRewriter:
    return PromptRewriter(config_from_dict(RewriteConfig, {"reframe": [
        {"name": "beach", "contexts": ["beach"], "phrase": "wearing a suit", "request_policy": "honour"}]}))


def stack_config(**overrides) -> StackConfig:
    data = {"prompt_filter": {"config": "unused.yaml"}, "rewrite": {"config": "unused.yaml"},
            "output_check": {"config": "unused.yaml"},
            "regenerate": {"mode": "guided", "max_tries": 3, "concepts": CONCEPTS}}
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[section] = value
    return config_from_dict(StackConfig, data, where="stack")


def guarded(pipe, scorer=None, **overrides) -> GuardedGenerator:
    return GuardedGenerator(pipe, stack_config(**overrides), config_from_dict(GenerationConfig, GENERATION),
                            prompt_filter=prompt_filter(), rewriter=rewriter(),
                            moderator=moderator(scorer or ScriptedScorer()))


def direct(pipe, prompt, seed, negative=""):
    """The image the plain generation engine makes of one spec, for comparison."""
    spec = GenerationSpec(prompt=prompt, negative_prompt=negative, seed=seed, steps=2, guidance=5.0, height=32,
                          width=32, sampler="ddim")
    return generate(pipe, [spec], 1)[0]


@pytest.fixture
def generate_calls(monkeypatch):
    """Every spec list the stack hands to the generation engine."""
    calls = []

    def spy(pipe, specs, batch_size=16, progress=False):
        calls.append(list(specs))
        return generate(pipe, specs, batch_size, progress)

    monkeypatch.setattr(stack_module, "generate", spy)
    return calls


def test_a_blocked_prompt_is_never_generated(pipe, generate_calls):
    batch = guarded(pipe).run(["a nude person", "a photo of a dog"], [SEED, SEED])
    assert [len(specs) for specs in generate_calls] == [1]
    assert generate_calls[0][0].prompt == "a photo of a dog"
    blocked, allowed = batch.records
    assert batch.images[0] is None and batch.images[1].shape == (32, 32, 3)
    assert blocked.outcome == "blocked" and blocked.tries == [] and blocked.rewrite is None
    assert blocked.filter.blocked and blocked.filter.matches[0].term == "nude"
    assert "blocked" in blocked.warnings[0] and "explicit" in blocked.warnings[0]
    assert set(blocked.latency_ms) == {"filter", "total"}
    assert allowed.outcome == "clean" and allowed.tries_used == 1 and not allowed.filter.blocked
    assert {"filter", "rewrite", "generate", "output_check", "total"} <= set(allowed.latency_ms)


def test_the_model_gets_the_rewritten_prompt(pipe, generate_calls):
    image, record = guarded(pipe).run_one("a dog at the beach", SEED)
    assert record.rewrite.changed and record.model_prompt == "a dog at the beach, wearing a suit"
    assert generate_calls[0][0].prompt == "a dog at the beach, wearing a suit"
    assert any("rewritten" in w for w in record.warnings)
    np.testing.assert_array_equal(image, direct(pipe, "a dog at the beach, wearing a suit", SEED))


def test_a_flag_is_regenerated_on_the_same_seed_away_from_the_concept(pipe):
    scorer = ScriptedScorer([{"nudity"}, set()])
    image, record = guarded(pipe, scorer).run_one("a person in a park", SEED)
    first, second = record.tries
    assert (first.seed, first.guidance, first.flags) == (SEED, "none", ("nudity",))
    assert (second.seed, second.guidance, second.flags) == (SEED, "negative_prompt", ())
    assert second.negative_prompt == "nude" and second.safety_concept == "nude"
    assert record.outcome == "regenerated" and record.extra_generations == 1 and not record.blurred
    np.testing.assert_array_equal(image, direct(pipe, "a person in a park", SEED, negative="nude"))
    assert not np.array_equal(image, direct(pipe, "a person in a park", SEED))
    assert any("flagged (nudity)" in w for w in record.warnings)


def test_guided_takes_a_new_seed_only_once_the_seed_was_tried_with_those_concepts(pipe):
    # try 2 avoids nudity and shows a cat: try 3 keeps the seed and avoids both; try 4 needs a new seed
    scorer = ScriptedScorer([{"nudity"}, {"cat"}, {"nudity"}], default={"nudity"})
    config = {"regenerate__max_tries": 4, "negative_prompt": "blue"}
    _, record = guarded(pipe, scorer, **config).run_one("a person in a park", SEED)
    assert [t.seed for t in record.tries] == [SEED, SEED, SEED, retry_seed(SEED, 1)]
    assert [t.negative_prompt for t in record.tries] == ["blue", "blue, nude", "blue, nude, cat", "blue, nude, cat"]


def test_plain_regeneration_draws_the_eval_baselines_retry_seeds(pipe):
    scorer = ScriptedScorer([{"cat"}, {"cat"}, set()])
    image, record = guarded(pipe, scorer, regenerate__mode="plain").run_one("a person in a park", SEED)
    assert [t.seed for t in record.tries] == [SEED, retry_seed(SEED, 1), retry_seed(SEED, 2)]
    assert {t.negative_prompt for t in record.tries} == {""} and record.tries[1].guidance == "new_seed"
    np.testing.assert_array_equal(image, direct(pipe, "a person in a park", retry_seed(SEED, 2)))


def test_an_image_still_flagged_after_the_last_try_is_blurred(pipe):
    scorer = ScriptedScorer(default={"nudity"})
    image, record = guarded(pipe, scorer).run_one("a person in a park", SEED)
    assert record.outcome == "blurred" and record.blurred and record.tries_used == 3 and record.flagged
    last = direct(pipe, "a person in a park", retry_seed(SEED, 1), negative="nude")
    np.testing.assert_array_equal(image, blur_image(last, 0.08))
    assert image.std() < last.std()
    assert "after 3 tries; it is blurred" in record.warnings[-1]
    assert "blur" in record.latency_ms


def test_refuse_and_keep_instead_of_blur(pipe):
    image, record = guarded(pipe, ScriptedScorer(default={"cat"}), on_flag="refuse").run_one("a cat", SEED)
    assert image is None and record.outcome == "refused" and "withheld" in record.warnings[-1]
    image, record = guarded(pipe, ScriptedScorer(default={"cat"}), on_flag="keep",
                            regenerate__mode="off").run_one("a cat", SEED)
    assert record.outcome == "flagged" and record.tries_used == 1
    np.testing.assert_array_equal(image, direct(pipe, "a cat", SEED))


def test_layers_switch_off(pipe, generate_calls):
    off = {"prompt_filter__enabled": False, "rewrite__enabled": False, "output_check__enabled": False}
    batch = guarded(pipe, ScriptedScorer(default={"nudity"}), **off).run(["a nude person at the beach"], [SEED])
    record = batch.records[0]
    assert record.filter is None and record.rewrite is None and record.outcome == "clean"
    assert record.tries[0].flags == () and set(record.latency_ms) == {"generate", "total"}
    assert generate_calls[0][0].prompt == "a nude person at the beach"


def test_a_batch_gives_the_images_of_single_requests(pipe):
    prompts, seeds = ["a dog at the beach", "a nude cat", "a red ball", "a person in a park"], [1, 2, 3, 4]
    scorer = ScriptedScorer([set(), {"cat"}, set(), set()])  # the third prompt's first image is flagged
    batch = guarded(pipe, scorer).run(prompts, seeds)
    assert [r.outcome for r in batch.records] == ["clean", "blocked", "regenerated", "clean"]
    assert batch.extra_generations == 1
    for prompt, seed, image in zip(prompts, seeds, batch.images):
        if prompt == "a nude cat":
            continue
        if prompt == "a red ball":
            alone, _ = guarded(pipe, ScriptedScorer([{"cat"}])).run_one(prompt, seed)
        else:
            alone, _ = guarded(pipe).run_one(prompt, seed)
        np.testing.assert_array_equal(image, alone)


def test_records_are_complete_and_json_ready(pipe):
    batch = guarded(pipe, ScriptedScorer([{"nudity"}])).run(["a dog at the beach", "a nude dog"], [5, 6])
    logs = [json.loads(json.dumps(r.to_log())) for r in batch.records]
    keys = {"index", "prompt", "prompt_chars", "seed", "outcome", "filter", "rewrite", "tries", "tries_used",
            "extra_generations", "flagged", "blurred", "warnings", "latency_ms"}
    assert all(set(log) == keys for log in logs)
    generated, blocked = logs
    assert generated["rewrite"]["applied"] and generated["rewrite"]["prompt"].endswith("wearing a suit")
    assert generated["tries"][0]["flags"] == ["nudity"] and generated["tries"][0]["outputs"]["clip"]["scores"]
    assert generated["tries_used"] == 2 and generated["extra_generations"] == 1
    assert blocked["filter"]["matches"][0]["term"] == "nude" and blocked["filter"]["reason"].startswith("blocklist")
    assert set(batch.latency_ms) >= {"filter", "rewrite", "generate", "output_check", "total"}
    # without the prompt's text: the decisions stay, no piece of the prompt does
    redacted = json.dumps(batch.records[1].to_log(prompt_text=False))
    assert "a nude dog" not in redacted and "'nude'" in redacted and '"prompt": null' in redacted


def test_sld_guided_regeneration_runs_on_the_same_seed(pipe):
    image, record = guarded(pipe, ScriptedScorer([{"nudity"}]), regenerate__guidance="sld").run_one("a person", SEED)
    second = record.tries[1]
    assert (second.seed, second.guidance, second.safety_concept, second.negative_prompt) == (SEED, "sld", "nude", "")
    assert record.outcome == "regenerated" and image.shape == (32, 32, 3)
    assert not np.array_equal(image, direct(pipe, "a person", SEED))  # the guidance acted on the same seed


def test_layers_are_built_from_their_files_and_the_scorer_by_name(pipe, tmp_path):
    files = {
        "filter.yaml": {"prompt_filter": {"blocklist": {"explicit": ["nude"]}}},
        "rewrite.yaml": {"rewrite": {"reframe": [{"name": "beach", "contexts": ["beach"], "phrase": "wearing a suit",
                                                  "request_policy": "honour"}]}},
        "moderation.yaml": {"moderate": {"scorers": {"test_always_nude": {"level": 1.0}},
                                         "flags": [{"name": "nudity", "scorer": "test_always_nude",
                                                    "score": "nudity"}]}},
    }
    for name, data in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(data))
    config = config_from_dict(StackConfig, {
        "prompt_filter": {"config": str(tmp_path / "filter.yaml")}, "rewrite": {"config": str(tmp_path / "rewrite.yaml")},
        "output_check": {"config": str(tmp_path / "moderation.yaml")},
        "regenerate": {"mode": "guided", "max_tries": 2, "concepts": {"nudity": "nude"}}}, where="stack")
    guard = GuardedGenerator(pipe, config, config_from_dict(GenerationConfig, GENERATION))
    batch = guard.run(["a nude dog", "a dog at the beach"], [1, 2])
    assert [r.outcome for r in batch.records] == ["blocked", "blurred"]
    assert batch.records[1].model_prompt == "a dog at the beach, wearing a suit"


def test_bad_config_and_input_are_clear_errors(pipe):
    with pytest.raises(ConfigError, match=r"stack\.rewrite\.config is not set.*enabled=false"):
        config_from_dict(StackConfig, {"prompt_filter": {"config": "f.yaml"}, "output_check": {"config": "m.yaml"}})
    with pytest.raises(ConfigError, match=r"needs a concept text for every flag rule; none for \['cat'\]"):
        guarded(pipe, regenerate__concepts={"nudity": "nude"})
    with pytest.raises(ConfigError, match=r"max_tries must be >= 1"):
        stack_config(regenerate__max_tries=0)
    with pytest.raises(ConfigError, match=r"guidance=sld acts through classifier-free guidance"):
        GuardedGenerator(pipe, stack_config(regenerate__guidance="sld"),
                         config_from_dict(GenerationConfig, {**GENERATION, "guidance": 1.0}),
                         prompt_filter=prompt_filter(), rewriter=rewriter(), moderator=moderator(ScriptedScorer()))
    guard = guarded(pipe)
    with pytest.raises(DataError, match="2 prompts but 1 seeds"):
        guard.run(["a", "b"], [1])
    with pytest.raises(DataError, match="prompts must be a list of strings"):
        guard.run("a dog", [1])
    with pytest.raises(DataError, match=r"seed 0 must be an integer"):
        guard.run(["a dog"], [-1])
    with pytest.raises(DataError, match="prompt 0 is int"):
        guard.run([3], [1])
