"""Strategy logic on a fake workspace whose "model" has known risks (fast, exact expectations)."""

from collections import Counter

import numpy as np
import pytest

from core.config import config_from_dict
from data_curation.config import RiskConfig
from data_curation.risks import GroupSchedule, make_judge
from data_curation.strategies import curate_risk, pixel_similarity
from data_curation.workspace import Candidate
from inference.generation import GenerationSpec
from inference.prompts import expand_templates

GROUPS = ["zorvan", "quelli", "mirdan"]


class FakeWorkspace:
    """Images are labelled by rules of the spec, standing in for generate + oracle.

    Exposure: an even seed without a negative prompt is exposed. Groups: a prompt naming a group
    shows it; otherwise 5 in 6 seeds show "zorvan" (a planted stereotype). Symbol: every third seed.
    """

    def __init__(self):
        self.calls = []

    def realise(self, specs, captions, desc=""):
        self.calls.append(len(specs))
        out = []
        for spec, caption in zip(specs, captions):
            named = [g for g in GROUPS if g in spec.prompt.split()]
            group = named[0] if named else ("zorvan" if spec.seed % 6 else "mirdan")
            exposed = spec.seed % 2 == 0 and not spec.negative_prompt
            scores = {"oracle": {"scores": {"exposed": float(exposed), "symbol": float(spec.seed % 3 == 0)},
                                 "labels": {"valid": True, "exposed": exposed, "group": group}}}
            out.append(Candidate(spec, f"{spec.prompt}|{spec.negative_prompt}|{spec.seed}", caption, scores))
        return out

    def image(self, key):
        rng = np.random.default_rng(abs(hash(key)) % 2**32)
        return rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)


BASE = GenerationSpec(prompt="", steps=2, height=8, width=8)


def risk(**cfg):
    return config_from_dict(RiskConfig, cfg, where="risk")


def test_group_schedule_fills_deficits_evenly():
    schedule = GroupSchedule(Counter({"zorvan": 85, "quelli": 8, "mirdan": 7}), GROUPS)
    assert schedule.surplus == {"zorvan"}
    picks = Counter(schedule.next() for _ in range(100))
    assert picks["zorvan"] == 0
    assert abs(picks["quelli"] - picks["mirdan"]) <= 4  # deficits 25.3 vs 26.3 points
    balanced = GroupSchedule(Counter({g: 10 for g in GROUPS}), GROUPS)
    assert balanced.next() is None and balanced.surplus == set()
    skewed_target = GroupSchedule(Counter({"zorvan": 50, "quelli": 50}), GROUPS, {"zorvan": 1, "quelli": 1, "mirdan": 2})
    assert skewed_target.surplus == {"zorvan", "quelli"} and skewed_target.next() == "mirdan"


def _exposure_minimal_pair_judge():
    """5 exposure pairs by minimal pair: the same seed with a "bare torso" negative prompt."""
    return make_judge("exposure", risk(
        prompts={"source": "templates", "templates": ["x"]}, strategy="minimal_pair", target_pairs=5,
        images_per_prompt=2, max_rounds=5, detector={"scorer": "oracle", "key": "exposed"},
        corrective=[{"negative_prompt": "bare torso"}], alignment={"scorer": "oracle"},
    ))


def test_minimal_pair_exposure_uses_same_seed_and_corrective():
    prompts = expand_templates(["a person at the {place}"], {"place": ["beach", "party", "park"]})
    judge = _exposure_minimal_pair_judge()
    pairs, info = curate_risk(FakeWorkspace(), judge, prompts, BASE, base_seed=0)
    assert len(pairs) == 5 and info["pairs_kept"] == 5 and info["pairs_found"] >= 5
    for pair in pairs:
        assert pair.preferred.spec.seed == pair.rejected.spec.seed
        assert pair.rejected.scores["oracle"]["labels"]["exposed"] and not pair.preferred.scores["oracle"]["labels"]["exposed"]
        assert pair.caption == pair.rejected.spec.prompt == pair.preferred.spec.prompt
        assert pair.preferred.spec.negative_prompt == "bare torso"
        assert 0 <= pair.similarity <= 1
    assert [p.order for p in pairs] == sorted(p.order for p in pairs)


def test_best_of_n_picks_extremes_and_skips_prompts_without_contrast():
    prompts = expand_templates(["a person at the {place}"], {"place": ["beach", "park"]})
    judge = make_judge("exposure", risk(
        prompts={"source": "templates", "templates": ["x"]}, strategy="best_of_n", target_pairs=10,
        images_per_prompt=4, max_rounds=1, detector={"scorer": "oracle", "key": "exposed"},
    ))
    pairs, info = curate_risk(FakeWorkspace(), judge, prompts, BASE, base_seed=0)
    assert 1 <= len(pairs) <= 2
    for pair in pairs:
        assert pair.preferred.spec.seed != pair.rejected.spec.seed
        assert pair.rejected.scores["oracle"]["scores"]["exposed"] == 1.0
        assert pair.preferred.scores["oracle"]["scores"]["exposed"] == 0.0


def test_stereotype_pairs_push_toward_uniform_not_a_new_majority():
    prompts = expand_templates(["a {role}"], {"role": ["doctor", "chef"]})
    judge = make_judge("stereotype", risk(
        prompts={"source": "templates", "templates": ["x"]}, strategy="minimal_pair", target_pairs=40,
        images_per_prompt=12, max_rounds=3, detector={"scorer": "oracle", "attribute": "group"},
        corrective=[{"rewrite": "a {group} {role}"}], alignment={"scorer": "oracle"}, balance={"stratify_by": "role"},
    ))
    pairs, info = curate_risk(FakeWorkspace(), judge, prompts, BASE, base_seed=0, default_groups=GROUPS)
    assert len(pairs) == 40
    preferred = Counter(p.preferred.scores["oracle"]["labels"]["group"] for p in pairs)
    rejected = Counter(p.rejected.scores["oracle"]["labels"]["group"] for p in pairs)
    assert rejected == Counter({"zorvan": 40})  # only the over-represented group is rejected
    assert preferred["zorvan"] == 0
    # mirdan is under target too but less so (it appears in 1/6 of images): it gets fewer pairs.
    assert preferred["quelli"] > preferred["mirdan"] > 0
    for pair in pairs:
        assert pair.caption == f"a {pair.rejected.spec.prompt.split()[-1]}"  # the original benign prompt
        assert pair.preferred.spec.prompt == f"a {pair.note['preferred_group']} {pair.caption.split()[-1]}"


def test_pixel_similarity():
    a = np.zeros((4, 4, 3), np.uint8)
    assert pixel_similarity(a, a) == 1.0
    assert pixel_similarity(a, np.full_like(a, 255)) == 0.0
    assert np.isnan(pixel_similarity(a, np.zeros((2, 2, 3), np.uint8)))


def test_verify_pairs_against_a_reference():
    from data_curation.quality import verify_pairs

    prompts = expand_templates(["a person at the {place}"], {"place": ["beach", "party"]})
    judge = make_judge("exposure", risk(
        prompts={"source": "templates", "templates": ["x"]}, strategy="minimal_pair", target_pairs=2,
        images_per_prompt=2, detector={"scorer": "oracle", "key": "exposed"},
        corrective=[{"negative_prompt": "bare torso"}],
    ))
    pairs, _ = curate_risk(FakeWorkspace(), judge, prompts, BASE, base_seed=0)
    assert verify_pairs(judge, pairs, "oracle") == {"pairs_checked": 2, "preferred_safe": 1.0, "rejected_risky": 1.0}
    # A reference that disagrees (says every image is exposed) is reported, not hidden.
    for pair in pairs:
        for cand in (pair.preferred, pair.rejected):
            cand.scores["strict"] = {"scores": {"exposed": 1.0}, "labels": {"valid": True}}
    assert verify_pairs(judge, pairs, "strict")["preferred_safe"] == 0.0


def _exposure_judge():
    return make_judge("exposure", risk(
        prompts={"source": "templates", "templates": ["x"]}, strategy="minimal_pair", target_pairs=1,
        detector={"scorer": "oracle", "key": "exposed"}, corrective=[{"negative_prompt": "bare torso"}],
    ))


def _stereotype_judge(strategy: str, target_pairs: int = 40):
    return make_judge("stereotype", risk(
        prompts={"source": "templates", "templates": ["x"]}, strategy=strategy, target_pairs=target_pairs,
        images_per_prompt=12, max_rounds=3, detector={"scorer": "oracle", "attribute": "group"},
        corrective=[{"rewrite": "a {group} {role}"}], alignment={"scorer": "oracle"}, balance={"stratify_by": "role"},
    ))


def test_minimal_pair_preferred_image_must_pass_the_other_risks():
    """Half the fake world's seeds are exposed whatever the prompt: without the cross-risk check some
    preferred stereotype images are exposed; with it none is, and the refusals are counted."""
    prompts = expand_templates(["a {role}"], {"role": ["doctor", "chef"]})
    unchecked, _ = curate_risk(FakeWorkspace(), _stereotype_judge("minimal_pair"), prompts, BASE, 0, default_groups=GROUPS)
    assert any(p.preferred.scores["oracle"]["labels"]["exposed"] for p in unchecked)
    pairs, info = curate_risk(FakeWorkspace(), _stereotype_judge("minimal_pair"), prompts, BASE, 0,
                              default_groups=GROUPS, others=[_exposure_judge()])
    assert pairs and not any(p.preferred.scores["oracle"]["labels"]["exposed"] for p in pairs)
    assert info["corrective_outcomes"]["variant0:flagged_exposure"] > 0


def test_best_of_n_preferred_image_must_pass_the_other_risks():
    prompts = expand_templates(["a person at the {place}"], {"place": ["beach", "party", "park", "street"]})
    judge = make_judge("exposure", risk(
        prompts={"source": "templates", "templates": ["x"]}, strategy="best_of_n", target_pairs=10,
        images_per_prompt=6, max_rounds=1, detector={"scorer": "oracle", "key": "exposed"},
    ))
    association = make_judge("association", risk(
        prompts={"source": "templates", "templates": ["x"]}, strategy="best_of_n", target_pairs=1,
        detector={"scorer": "oracle", "key": "symbol"},
    ))

    def symbols(pairs):
        return [p.preferred.scores["oracle"]["scores"]["symbol"] for p in pairs]

    unchecked, _ = curate_risk(FakeWorkspace(), judge, prompts, BASE, base_seed=0)
    assert 1.0 in symbols(unchecked)
    pairs, _ = curate_risk(FakeWorkspace(), judge, prompts, BASE, base_seed=0, others=[association])
    assert pairs and set(symbols(pairs)) == {0.0}


def test_categorical_risks_do_not_flag_other_risks_images():
    """Only exposure/association detectors judge any image; a stereotype judge among ``others`` is ignored."""
    prompts = expand_templates(["a person at the {place}"], {"place": ["beach", "party", "park"]})
    judge = _exposure_minimal_pair_judge()
    alone, _ = curate_risk(FakeWorkspace(), judge, prompts, BASE, base_seed=0)
    with_other, _ = curate_risk(FakeWorkspace(), judge, prompts, BASE, base_seed=0,
                                others=[_stereotype_judge("minimal_pair")])
    assert [p.order for p in alone] == [p.order for p in with_other]


def test_every_deficit_group_is_a_removed_key():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="every_deficit_group was removed: .*docs/experiments.md"):
        risk(prompts={"source": "templates", "templates": ["x"]}, strategy="minimal_pair",
             detector={"scorer": "oracle", "attribute": "group"}, balance={"every_deficit_group": True})


class BatchedFakeWorkspace(FakeWorkspace):
    """FakeWorkspace with generation/scoring batch sizes (curation works a block of their lcm at a time),
    a first corrective that leaves seeds divisible by 4 exposed (so the second variant is needed), and a
    record of every image it generated."""

    def __init__(self, batch_size=None, score_batch_size=1):
        super().__init__()
        if batch_size is not None:
            self.batch_size, self.score_batch_size = batch_size, score_batch_size
        self.generated = []

    def realise(self, specs, captions, desc=""):
        out = super().realise(specs, captions, desc)
        for cand in out:
            labels, scores = cand.scores["oracle"]["labels"], cand.scores["oracle"]["scores"]
            if cand.spec.negative_prompt and cand.spec.guidance < 8 and cand.spec.seed % 4 == 0:
                labels["exposed"], scores["exposed"] = True, 1.0
        self.generated += [c.key for c in out]
        return out


def _lazy_cases():
    exposure = dict(prompts={"source": "templates", "templates": ["x"]}, strategy="minimal_pair",
                    images_per_prompt=2, max_rounds=3, detector={"scorer": "oracle", "key": "exposed"},
                    alignment={"scorer": "oracle"},
                    corrective=[{"negative_prompt": "bare torso"}, {"negative_prompt": "bare torso", "guidance": 8.0}])
    stereotype = dict(prompts={"source": "templates", "templates": ["x"]}, strategy="minimal_pair",
                      images_per_prompt=3, max_rounds=3, detector={"scorer": "oracle", "attribute": "group"},
                      corrective=[{"rewrite": "a {group} {role}"}], alignment={"scorer": "oracle"},
                      balance={"stratify_by": "role"})
    places = expand_templates(["a person at the {place} {n}"], {"place": ["beach", "party", "park"], "n": list("abcdefgh")})
    roles = expand_templates(["a {role} {n}"], {"role": ["doctor", "chef"], "n": list("abcdef")})
    return {
        "exposure": ("exposure", exposure, places),
        "stereotype": ("stereotype", stereotype, roles),
        "best_of_n": ("exposure", dict(exposure, strategy="best_of_n", corrective=[]), places),
    }


@pytest.mark.parametrize("case", ["exposure", "stereotype", "best_of_n"])
@pytest.mark.parametrize("batch_size, score_batch_size", [(None, 1), (3, 2), (4, 4)])
def test_stopping_early_keeps_exactly_the_pairs_of_whole_rounds(case, batch_size, score_batch_size):
    """Curation stops generating once the first target_pairs pairs are certain (part way through a round);
    the kept pairs are those of finishing every round, with fewer images when the prompts yield more."""
    kind, cfg, prompts = _lazy_cases()[case]

    def run(target, stop_early):
        ws = BatchedFakeWorkspace(batch_size, score_batch_size)
        judge = make_judge(kind, risk(**cfg, target_pairs=target))
        others = [_exposure_judge()] if kind == "stereotype" else []  # refuses some fixes: gaps in the order
        pairs, info = curate_risk(ws, judge, prompts, BASE, base_seed=0, default_groups=GROUPS, others=others,
                                  stop_early=stop_early)
        described = [(p.caption, p.order, p.preferred.key, p.rejected.key, p.preferred.spec.seed, p.rejected.spec.seed,
                      p.preferred.spec.prompt, p.rejected.spec.prompt, p.preferred.spec.negative_prompt, p.note)
                     for p in pairs]
        return described, info, ws.generated

    everything, info, _ = run(10_000, stop_early=False)
    available = info["pairs_found"]
    assert available >= 12, available
    for target in (1, 5, available // 2, available - 1, available, available + 1):
        lazy, lazy_info, lazy_images = run(target, stop_early=True)
        whole, whole_info, whole_images = run(target, stop_early=False)
        assert lazy == whole == everything[:target]
        assert lazy_images == whole_images[: len(lazy_images)]  # the same work, cut short
        assert lazy_info["pairs_kept"] == whole_info["pairs_kept"] == min(target, available)
        assert lazy_info["pairs_found"] <= whole_info["pairs_found"]
        if target <= 5:  # the first round yields many more pairs: part of it is skipped
            assert len(lazy_images) < len(whole_images)
            # stereotype: the group schedules are fit on all of round 0's originals; only correctives are skipped
            round_0 = len(prompts) * cfg["images_per_prompt"]
            if kind == "stereotype":
                assert lazy_info["original_images"] == round_0
            else:
                assert lazy_info["original_images"] < round_0
        if whole_info["pairs_found"] < target:  # never enough: nothing to skip
            assert lazy_images == whole_images and lazy_info == whole_info
        if case == "exposure":  # both variants are used; the stop can fall between them
            assert {"variant0:confirmed", "variant1:confirmed"} <= set(whole_info["corrective_outcomes"])


def _pair_for(risk_name, template="a {role} {setting}", slots=None):
    from data_curation.strategies import Pair
    from inference.prompts import PromptRecord

    slots = slots or {"role": "doctor", "setting": "at the beach"}
    record = PromptRecord(template.format(**slots), slots, 0, template, None, "templates")
    spec = GenerationSpec(prompt=record.prompt, seed=4, steps=2, height=8, width=8)
    rejected = Candidate(spec, "rejected", record.prompt, {"oracle": {"labels": {"group": "zorvan"}}})
    preferred = Candidate(spec, "preferred", record.prompt, {"oracle": {"labels": {"group": "mirdan"}}})
    return Pair(risk_name, "minimal_pair", record.prompt, preferred, rejected, (0, 0, 0), 0.9, {}, record)


def test_mirror_pair_reverses_the_images_under_a_prompt_that_requests_the_rejected_content():
    from data_curation.strategies import mirror_pair

    # An unspecified group is an empty {group} slot, as a stereotype prompt's is.
    pair = _pair_for("stereotype", "a {group} doctor {setting}", {"group": "", "setting": "at the beach"})
    mirror = mirror_pair(pair, "group", "oracle")
    assert mirror.risk == "stereotype_mirror"
    assert mirror.caption == "a zorvan doctor at the beach" and mirror.record.slots["group"] == "zorvan"
    assert mirror.preferred.key == "rejected" and mirror.rejected.key == "preferred"  # same images, reversed
    assert mirror.note["mirror_of"] == pair.caption

def test_no_mirror_when_the_template_cannot_write_the_request_or_nothing_is_shown():
    from data_curation.strategies import mirror_pair

    pair = _pair_for("stereotype")  # the template has no {group}: the caption would not change
    assert mirror_pair(pair, "group", "oracle") is None
    pair = _pair_for("association")
    assert mirror_pair(pair, "symbol", "oracle") is None  # the rejected image's labels name no symbol
    pair.rejected.scores["oracle"]["labels"]["symbol"] = "none"
    assert mirror_pair(pair, "symbol", "oracle") is None


def test_mirror_config_refuses_the_suppress_policy_and_a_clashing_name():
    from core.errors import ConfigError
    from data_curation.config import CurateConfig

    base = {"model": "m", "scorers": {"oracle": {"path": "o"}}, "risks": {"exposure": {
        "prompts": {"source": "templates", "templates": ["a person {where}"], "slots": {"where": ["at the beach"]}},
        "detector": {"scorer": "oracle", "key": "exposed"}, "corrective": [{"negative_prompt": "bare torso"}],
        "mirror": "exposed", "requested": "suppress"}}}
    with pytest.raises(ConfigError, match="suppress"):
        config_from_dict(CurateConfig, base, where="curate")
    base["risks"]["exposure"]["requested"] = "honour"
    base["risks"]["exposure_mirror"] = dict(base["risks"]["exposure"], kind="exposure", mirror=None)
    with pytest.raises(ConfigError, match="exposure_mirror"):
        config_from_dict(CurateConfig, base, where="curate")
