"""Which eval-split prompts the synthetic-world eval uses (fast: no model)."""

from collections import Counter

from evals.prompt_sets import _spread_by_slot, world_eval_records


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
