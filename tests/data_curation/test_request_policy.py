"""Minimal pairs that change only the risk, and the explicit-request policy (honour | suppress)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from core.config import config_from_dict
from core.errors import ConfigError
from data_curation.config import CurateConfig, RiskConfig
from data_curation.quality import verify_pairs
from data_curation.risks import cross_risk_judges, make_judge, make_judges
from data_curation.strategies import curate_risk
from data_curation.workspace import Candidate
from inference.generation import GenerationSpec
from inference.prompts import expand_templates

BASE = GenerationSpec(prompt="", steps=2, height=8, width=8)


class SettingDriftWorkspace:
    """Exposure stand-in: a prompt asking for a bare torso shows it; otherwise an even seed is exposed. A
    negative prompt clothes the figure, and on seeds divisible by 4 it also moves the scene to the park."""

    def realise(self, specs, captions, desc=""):
        out = []
        for spec, caption in zip(specs, captions):
            asked = "bare torso" in spec.prompt
            exposed = (asked or spec.seed % 2 == 0) and not spec.negative_prompt
            setting = "park" if spec.negative_prompt and spec.seed % 4 == 0 else "beach"
            labels = {"valid": True, "exposed": exposed, "setting": setting}
            scores = {"oracle": {"scores": {"exposed": float(exposed)}, "labels": labels}}
            out.append(Candidate(spec, f"{spec.prompt}|{spec.negative_prompt}|{spec.seed}", caption, scores))
        return out

    def image(self, key):
        return np.random.default_rng(abs(hash(key)) % 2**32).integers(0, 255, (8, 8, 3), dtype=np.uint8)


def _risk(**extra):
    cfg = dict(prompts={"source": "templates", "templates": ["x"]}, strategy="minimal_pair", target_pairs=6,
               images_per_prompt=4, max_rounds=4, detector={"scorer": "oracle", "key": "exposed"},
               corrective=[{"negative_prompt": "bare torso"}], alignment={"scorer": "oracle"})
    cfg.update(extra)
    return config_from_dict(RiskConfig, cfg, where="risk")


PROMPTS = expand_templates(["a person at the beach {n}"], {"n": [str(i) for i in range(6)]})
REQUESTS = expand_templates(["a person with a bare torso at the beach {n}"], {"n": [str(i) for i in range(6)]})


def test_keep_attributes_refuses_a_preferred_image_in_another_setting():
    loose, _ = curate_risk(SettingDriftWorkspace(), make_judge("exposure", _risk()), PROMPTS, BASE, 0)
    assert any(p.preferred.scores["oracle"]["labels"]["setting"] == "park" for p in loose)  # "avoid beaches"
    strict_judge = make_judge("exposure", _risk(alignment={"scorer": "oracle", "keep_attributes": ["setting"]}))
    strict, info = curate_risk(SettingDriftWorkspace(), strict_judge, PROMPTS, BASE, 0)
    assert len(strict) == 6
    for pair in strict:
        assert pair.preferred.scores["oracle"]["labels"]["setting"] == pair.rejected.scores["oracle"]["labels"]["setting"]
    assert info["corrective_outcomes"]["variant0:changed_setting"] > 0


def test_honour_prefers_the_requested_content_and_suppress_drops_it():
    honour = make_judge("exposure_request", _risk(kind="exposure"), parent="exposure", keeps_request=True)
    suppress = make_judge("exposure_request", _risk(kind="exposure"), parent="exposure", keeps_request=False)
    kept, _ = curate_risk(SettingDriftWorkspace(), honour, REQUESTS, BASE, 0)
    dropped, _ = curate_risk(SettingDriftWorkspace(), suppress, REQUESTS, BASE, 0)
    assert len(kept) == len(dropped) == 6
    for a, b in zip(kept, dropped):
        assert a.caption == b.caption and "bare torso" in a.caption
        # the same two images, in opposite roles
        assert (a.preferred.key, a.rejected.key) == (b.rejected.key, b.preferred.key)
        assert a.preferred.scores["oracle"]["labels"]["exposed"] and not a.rejected.scores["oracle"]["labels"]["exposed"]
        assert a.note.get("keeps_request") and not b.note.get("keeps_request")
    assert verify_pairs(honour, kept, "oracle") == {"pairs_checked": 6, "preferred_shows_request": 1.0,
                                                    "rejected_lacks_request": 1.0}
    assert verify_pairs(suppress, dropped, "oracle")["preferred_safe"] == 1.0


def _curate_config(policy: str, **risk_extra) -> CurateConfig:
    exposure = {"prompts": {"source": "world", "family": "exposure"},
                "detector": {"scorer": "oracle", "key": "exposed"},
                "corrective": [{"set_slots": {"exposed": False}}], "requested": policy,
                "request_prompts": {"source": "world", "family": "exposure_request"}, "request_pairs": 5}
    exposure.update(risk_extra)
    association = {"prompts": {"source": "world", "family": "association"},
                   "detector": {"scorer": "oracle", "key": "symbol_present"},
                   "corrective": [{"negative_prompt": "cage"}]}
    return config_from_dict(CurateConfig, {"model": "m", "scorers": {"oracle": {}},
                                           "risks": {"exposure": exposure, "association": association}})


def test_request_task_is_derived_from_its_risk_and_skips_its_own_detector():
    cfg = _curate_config("honour")
    assert list(cfg.tasks()) == ["exposure", "exposure_request", "association"]
    assert cfg.tasks()["exposure_request"].prompts.family == "exposure_request"
    assert cfg.tasks()["exposure_request"].target_pairs == 5
    judges = {j.name: j for j in make_judges(cfg)}
    assert judges["exposure_request"].keeps_request and judges["exposure_request"].parent == "exposure"
    assert not make_judges(_curate_config("suppress"))[1].keeps_request
    # a request pair's image shows exposure by design: only the association detector checks it
    assert [j.name for j in cross_risk_judges(judges["exposure_request"], list(judges.values()))] == ["association"]
    assert [j.name for j in cross_risk_judges(judges["exposure"], list(judges.values()))] == ["association"]


def test_request_policy_config_errors():
    with pytest.raises(ConfigError, match="needs request_prompts"):
        config_from_dict(CurateConfig, {"model": "m", "scorers": {"oracle": {}}, "risks": {"exposure": {
            "prompts": {"source": "world", "family": "exposure"}, "detector": {"scorer": "oracle", "key": "exposed"},
            "corrective": [{"negative_prompt": "x"}], "request_pairs": 3}}})
    with pytest.raises(ConfigError, match="strategy: minimal_pair"):
        _curate_config("honour", strategy="best_of_n", corrective=[])
    with pytest.raises(ConfigError, match="not a valid|honour"):
        _curate_config("hide")


def test_on_policy_schedule_targets_the_current_models_majority():
    """Fit on the current (aligned) model's images, the schedule rejects the group it now over-produces
    (mirdan, an overshoot), not the base model's old majority (zorvan), and prefers the deficit groups."""
    judge = make_judge("stereotype", _risk(detector={"scorer": "oracle", "attribute": "group"},
                                           corrective=[{"rewrite": "a {group} doctor"}],
                                           balance={"stratify_by": "role"}))
    base_images = ["zorvan"] * 85 + ["quelli"] * 8 + ["mirdan"] * 7
    current_images = ["mirdan"] * 70 + ["zorvan"] * 20 + ["quelli"] * 10
    record = expand_templates(["a {role}"], {"role": ["doctor"]})[0]

    def fit(groups):
        judge.fit_schedules([(record, {"oracle": {"scores": {}, "labels": {"valid": True, "group": g}}})
                             for g in groups], ["zorvan", "quelli", "mirdan"])
        return judge.schedule_for(record)

    assert fit(base_images).surplus == {"zorvan"}
    on_policy = fit(current_images)
    assert on_policy.surplus == {"mirdan"}
    assert Counter(on_policy.next() for _ in range(30)).keys() <= {"zorvan", "quelli"}


def test_caption_variants_are_curation_paraphrases_never_eval_prompts():
    from synthetic_world.prompt_source import world_prompt_records
    from synthetic_world.prompts import EVAL_ONLY_TEMPLATES, FAMILIES, prompt_records, shift_records

    eval_texts = {r["prompt"] for r in prompt_records(split="eval")}
    eval_texts |= {r["prompt"] for r in shift_records()}
    records = world_prompt_records("exposure", "curation")[:40]
    for record in records:
        variants = record.paraphrases(3)
        assert len(variants) == 3 and record.prompt not in variants and len(set(variants)) == 3
        assert record.paraphrases(3) == variants  # deterministic
    # Every variant of every curation record, as many as the grammar has: sparse combinations render alike under
    # some curation and eval-only templates, and such a text is an eval prompt.
    for family in FAMILIES:
        for record in world_prompt_records(family, "curation"):
            assert not set(record.paraphrases(30)) & eval_texts, record.prompt
    # The same for the request captions of mirror and request pairs (a record with its risk's slot set).
    from synthetic_world.prompt_source import PROMPT_SOURCE
    from synthetic_world.vocab import SYMBOLS

    for family, changes in [("exposure", {"exposed": True}), ("clothed_trigger", {"exposed": True}),
                            *[("association", {"symbol": symbol}) for symbol in SYMBOLS[1:]]]:
        for record in world_prompt_records(family, "curation"):
            assert PROMPT_SOURCE.request_caption(record, changes) not in eval_texts, record.prompt
    # every variant is the same request under another curation template
    from synthetic_world.captions import caption_for
    from synthetic_world.prompts import spec_of
    usable = [t for t in range(24) if t not in EVAL_ONLY_TEMPLATES]
    for record in records[:5]:
        written = {caption_for(spec_of(record.slots), t) for t in usable}
        assert set(record.paraphrases(3)) <= written
    assert expand_templates(["a {x}"], {"x": ["b"]})[0].paraphrases(3) == []
