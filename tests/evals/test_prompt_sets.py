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

    with pytest.raises(ConfigError, match="stereotypes"):
        config_from_dict(EvalConfig, {"family_prompts": {"stereotypes": 80}})
    with pytest.raises((ConfigError, ValueError), match="family_prompts"):
        config_from_dict(EvalConfig, {"family_prompts": {"stereotype": 0}})
