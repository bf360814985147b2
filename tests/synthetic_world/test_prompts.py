"""Prompt sets: families are what they claim, the split has no leakage, and leaks are caught."""

import pytest

from core.errors import LeakageError
from synthetic_world.captions import caption_for
from synthetic_world.prompts import (
    EVAL_ONLY_TEMPLATES,
    FAMILIES,
    check_no_leakage,
    is_held_out_combination,
    prompt_records,
    spec_of,
)
from synthetic_world.sampler import is_exposure_trigger
from synthetic_world.vocab import MISALIGNMENT_GROUP, MISALIGNMENT_OUTFIT, ROLE_MAJORITY_GROUP


@pytest.fixture(scope="module")
def splits():
    return prompt_records(split="curation"), prompt_records(split="eval")


def test_every_family_has_both_splits_of_useful_size(splits):
    for family in FAMILIES:
        assert len(prompt_records(family, "curation")) >= 300
        assert len(prompt_records(family, "eval")) >= 150


def test_records_are_well_formed_and_prompts_match_their_slots(splits):
    for record in splits[0][::7] + splits[1][::7]:
        assert set(record) == {"prompt", "template_id", "slots", "family", "split"}
        assert record["prompt"] == caption_for(spec_of(record["slots"]), record["template_id"])


def test_family_definitions(splits):
    for r in splits[0] + splits[1]:
        s, family = r["slots"], r["family"]
        if family == "exposure_request":  # the request families ask for the risk's content outright
            assert s["exposed"] is True and "symbol" not in s
            continue
        if family == "symbol_request":
            assert s["symbol"] in ("cage", "skull", "cloud") and "group" in s and "exposed" not in s
            continue
        if family == "clothed_trigger":
            assert s["exposed"] is False and is_exposure_trigger(s.get("setting"), s.get("activity"))
            continue
        assert "exposed" not in s and "symbol" not in s  # no other family requests a risk outright
        if family == "exposure":
            assert is_exposure_trigger(s.get("setting"), s.get("activity"))
        elif family == "stereotype":
            assert "group" not in s and s["role"] in ROLE_MAJORITY_GROUP
        elif family == "association":
            assert "group" in s
        elif family == "misalignment":
            assert s["group"] == MISALIGNMENT_GROUP and s["outfit"] != MISALIGNMENT_OUTFIT
        elif family == "explicit":
            assert {"group", "outfit", "color", "role", "setting", "object"} <= set(s)
        elif family == "neutral":
            assert "group" not in s and s["role"] == "none"
            assert not is_exposure_trigger(s.get("setting"), s.get("activity"))


def test_split_is_by_template_and_combination_with_no_leakage(splits):
    curation, eval_records = splits
    check_no_leakage(curation, eval_records)
    assert {r["template_id"] for r in eval_records} >= EVAL_ONLY_TEMPLATES
    assert not {r["template_id"] for r in curation} & EVAL_ONLY_TEMPLATES
    assert any(is_held_out_combination(r["slots"]) for r in eval_records)
    for family in FAMILIES:  # deduplicated within each family and split
        for records in (curation, eval_records):
            prompts = [r["prompt"] for r in records if r["family"] == family]
            assert len(prompts) == len(set(prompts))


def test_deterministic():
    assert prompt_records("explicit", "eval", limit=20) == prompt_records("explicit", "eval", limit=20)
    assert len(prompt_records("explicit", "eval", limit=20)) == 20


@pytest.mark.parametrize("leak", ["same_text", "eval_template", "held_out_combination"])
def test_check_no_leakage_catches_injected_leaks(splits, leak):
    curation, eval_records = splits
    if leak == "same_text":
        injected = dict(eval_records[0], split="curation", prompt=eval_records[0]["prompt"].upper() + " ")
    elif leak == "eval_template":
        injected = next(r for r in eval_records if r["template_id"] in EVAL_ONLY_TEMPLATES and not is_held_out_combination(r["slots"]))
        injected = dict(injected, prompt="a fresh text that appears nowhere else")
    else:
        held = next(r for r in eval_records if is_held_out_combination(r["slots"]))
        injected = dict(held, template_id=0, prompt=caption_for(spec_of(held["slots"]), 0) + ", extra")
    with pytest.raises(LeakageError) as info:
        check_no_leakage(curation + [injected], eval_records)
    assert injected["prompt"].strip()[:20] in str(info.value) or str(injected["slots"]) in str(info.value)


def test_shift_split_covers_every_family_and_never_produces_a_curation_prompt():
    from synthetic_world.prompts import check_shift_disjoint, shift_records
    from synthetic_world.shift_captions import SHIFT_TEMPLATE_IDS, shift_caption_for

    curation = prompt_records(split="curation")
    for family in FAMILIES:
        shift = shift_records(family)
        assert len(shift) >= 150, family
        assert {r["template_id"] for r in shift} <= set(SHIFT_TEMPLATE_IDS)
        # the same slot combinations as the in-grammar eval split, written in the other grammar
        eval_combos = {tuple(sorted(r["slots"].items())) for r in prompt_records(family, "eval")}
        assert {tuple(sorted(r["slots"].items())) for r in shift} <= eval_combos
        for r in shift[::5]:
            assert r["prompt"] == shift_caption_for(spec_of(r["slots"]), r["template_id"])
    check_shift_disjoint(curation, shift_records())


def test_shift_leakage_check_catches_a_curation_caption():
    from core.errors import LeakageError
    from synthetic_world.prompts import check_shift_disjoint

    curation = prompt_records("exposure", "curation")
    planted = dict(curation[3], template_id=1000)  # a curation caption passed off as a shift prompt
    with pytest.raises(LeakageError, match="overlap the curation grammar"):
        check_shift_disjoint(curation, [planted])
    # the same caption, not among the given curation prompts, is still caught: the grammar writes it
    with pytest.raises(LeakageError, match="curation template"):
        check_shift_disjoint(curation[:1], [planted])


def test_shift_captions_mention_exactly_the_requested_attributes():
    from synthetic_world.captions import mention_phrases
    from synthetic_world.prompts import shift_records

    for r in shift_records("explicit")[::9] + shift_records("neutral")[::9]:
        text = r["prompt"].lower()
        for attribute, value in r["slots"].items():
            if attribute in ("group", "color", "object", "role") and value != "none":
                assert any(p in text for p in mention_phrases(attribute, value)), (attribute, r["prompt"])
        for group in ("zorvan", "quelli", "mirdan"):
            assert (group in text) == (r["slots"].get("group") == group), r["prompt"]
        assert "cage" not in text and "skull" not in text and "bare" not in text


def test_request_captions_of_mirror_pairs_never_reach_an_eval_prompt(splits):
    """A mirror pair's caption is a curation prompt with one slot changed: the world writes it only when the new
    slot combination belongs to curation, so no training caption is an eval prompt or a held-out combination."""
    from inference.prompts import PromptRecord
    from synthetic_world.prompt_source import PROMPT_SOURCE

    curation, held_out = splits
    refused, mirrors = 0, []
    for r in curation[::5]:
        record = PromptRecord(r["prompt"], r["slots"], r["template_id"], None, r["family"], "world")
        for changes in ({"exposed": True}, {"symbol": "skull"}, {"group": "mirdan"}, {"outfit": "robe"}):
            caption = PROMPT_SOURCE.request_caption(record, changes)
            slots = {**r["slots"], **changes}
            if caption is None:
                refused += 1
                continue
            assert caption != r["prompt"]
            mirrors.append({"prompt": caption, "template_id": r["template_id"], "slots": slots})
    assert refused > 0 and len(mirrors) > 1000
    check_no_leakage(mirrors, held_out)
