"""The black-box search's mechanics on a fake judge: edits, phrase weights, budget accounting, admissibility and
early stopping; and the intervals the ASRs are reported with."""

from __future__ import annotations

import random

import pytest

from redteam.search import flatten_vocabulary, mutate, phrase_spans, run_search, screen_phrases
from redteam.stats import bootstrap_mean, wilson_interval

VOCAB = ["at the beach", "in an office", "smiling", "holding a cup", "with a ball", "doctor"]


def test_phrase_spans_prefer_longer_phrases_and_do_not_overlap():
    prompt = "a doctor at the beach, smiling, holding a cup"
    spans = phrase_spans(prompt, VOCAB + ["the beach"])
    assert [prompt[a:b] for a, b in spans] == ["doctor", "at the beach", "smiling", "holding a cup"]


def test_mutations_insert_substitute_or_delete_vocabulary_phrases():
    rng = random.Random(0)
    base = "a photo of a person in an office"
    weights = [1.0] * len(VOCAB)
    seen = {mutate(base, VOCAB, weights, rng) for _ in range(300)}
    assert "a photo of a person" in seen  # delete
    assert "a photo of a person at the beach" in seen  # substitute
    assert any(s.startswith(base + ", ") for s in seen)  # insert at the end
    assert all("  " not in s and not s.endswith(",") for s in seen)


def test_a_phrase_of_a_group_the_prompt_holds_replaces_it():
    phrases, group_of = flatten_vocabulary({"setting": ["at the beach", "in an office"], "mood": ["smiling"]})
    assert phrases == ["at the beach", "in an office", "smiling"] and group_of["in an office"] == "setting"
    rng = random.Random(1)
    weights = [1.0, 0.0, 0.0]  # always draws "at the beach"
    seen = {mutate("a person in an office, smiling", phrases, weights, rng, group_of) for _ in range(100)}
    # the setting is swapped, never doubled; deleting a phrase is the only other edit
    assert seen <= {"a person at the beach, smiling", "a person, smiling", "a person in an office"}
    assert "a person at the beach, smiling" in seen


class FakeJudge:
    """Success iff the prompt holds 'at the beach'; the score rises with 'smiling' (a partial signal)."""

    def __init__(self):
        self.calls: list[tuple[str, list[int]]] = []

    def __call__(self, candidates):
        self.calls += candidates
        out = []
        for prompt, seeds in candidates:
            hit = "at the beach" in prompt
            out.append((1.0 if hit else 0.3 * ("smiling" in prompt), hit, [f"img:{prompt}:{s}" for s in seeds]))
        return out


def _search(targets, budget, admissible=lambda p, t: True, per=1, children=3, seed=0):
    judge = FakeJudge()
    seeds = [[100 * i + j for j in range(per)] for i in range(len(targets))]
    results = run_search(targets, seeds, VOCAB, None, admissible, judge, budget, children, random.Random(seed))
    return results, judge


def test_phrase_weights_learn_across_targets():
    # every phrase screened at 0: the search has to find the trigger itself; learning from every candidate
    # (Thompson sampling, explore 0.1) breaks the targets with fewer images than drawing phrases uniformly (1.0)
    def images(explore):
        targets = [f"a person in an office, case {i}" for i in range(24)]
        results = run_search(targets, [[i] for i in range(24)], VOCAB + [f"filler {k}" for k in range(30)],
                             [0.0] * (len(VOCAB) + 30), lambda p, t: True, FakeJudge(), budget=60, children=2,
                             rng=random.Random(3), explore=explore)
        return sum(r.success for r in results), sum(r.images_used for r in results)

    learnt, uniform = images(0.1), images(1.0)
    assert learnt[0] >= uniform[0] and learnt[1] < 0.8 * uniform[1]


def test_search_finds_the_trigger_and_stops_at_the_first_success():
    targets = [f"a photo of a person in an office, variant {i}" for i in range(6)]
    results, judge = _search(targets, budget=40)
    assert all(r.success for r in results)
    for r in results:
        assert "at the beach" in r.prompt and r.images and r.images_used <= 40
        # every image is counted, and no round of this target came after the one that broke it
        mine = [p for p, s in judge.calls if s == r.seeds]
        assert len(mine) == r.images_used
        assert r.prompt in mine[-3:]  # children=3: the successful prompt is in the last round


def test_search_respects_the_budget_and_counts_every_image():
    results, judge = _search(["a person in an office"], budget=7, per=1, children=3)
    assert results[0].images_used == len(judge.calls) <= 7
    # images per candidate: a budget of 7 images at 3 images per prompt allows 2 prompts
    results, judge = _search(["a person in an office"], budget=7, per=3, children=3,
                             admissible=lambda p, t: "at the beach" not in p)
    assert len(judge.calls) == 2 and results[0].images_used == 6 and not results[0].success


def test_inadmissible_prompts_are_never_generated():
    admissible = lambda p, t: "at the beach" not in p  # noqa: E731
    results, judge = _search(["a person in an office"] * 3, budget=30, admissible=admissible)
    assert not any(r.success for r in results)
    assert all("at the beach" not in p for p, _ in judge.calls)
    assert all(r.images_used <= 30 for r in results)


def test_a_target_that_already_shows_the_risk_costs_one_candidate():
    results, judge = _search(["a person at the beach"], budget=20)
    assert results[0].success and results[0].prompt == "a person at the beach" and len(judge.calls) == 1


def test_screening_scores_each_phrase_on_the_probe():
    judge = FakeJudge()
    scores = screen_phrases(VOCAB, [("a person", [7]), ("a cat smiling", [8])], judge)
    assert scores[VOCAB.index("at the beach")] == 1.0 and scores[VOCAB.index("smiling")] == pytest.approx(0.3)
    assert scores[VOCAB.index("doctor")] == pytest.approx(0.15)  # the second probe smiles already
    assert [p for p, _ in judge.calls] == [f"a person, {v}" for v in VOCAB] + [f"a cat smiling, {v}" for v in VOCAB]


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(8, 10, 0.95)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 12)[0] == 0.0 and wilson_interval(12, 12)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_bootstrap_mean_brackets_the_mean():
    mean, low, high = bootstrap_mean([0.0, 0.5, 1.0, 1.0], n_boot=500)
    assert mean == pytest.approx(0.625) and low <= mean <= high
    assert bootstrap_mean([]) is None
