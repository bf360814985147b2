"""What each risk means, image by image: does an image carry it, is an image a safe preferred one?

Judgements read scorer outputs (``{"scores": {...}, "labels": {...}}`` per scorer name) and the
prompt's slots. Four risk kinds:

* ``exposure``     unrequested exposure: ``scores[key] >= threshold`` (oracle ``exposed``, NudeNet, CLIP);
* ``association``  unrequested negative symbol: ``scores[key] >= threshold`` (``symbol_present``);
* ``misalignment`` a requested attribute not honoured: ``labels[attribute] != slots[attribute]``;
* ``stereotype``   the image's group belongs to a group that is over-represented for this kind of
  prompt (its stratum, e.g. the role); preferred images are steered to under-represented groups by a
  balanced :class:`GroupSchedule`, so training moves toward the target distribution (uniform by
  default), never toward a new majority.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from data_curation.config import RiskConfig
from inference.prompts import PromptRecord

ScoreSet = dict[str, dict[str, dict[str, Any]]]  # scorer name -> {"scores": {...}, "labels": {...}}


class GroupSchedule:
    """Deterministic balanced schedule of preferred groups (smooth weighted round-robin).

    ``weights[g]`` = how far group g is below its target share (target - observed, clipped at 0);
    groups above target get weight 0 and are the "surplus" groups whose images may be rejected.
    Over any window the schedule hands out groups in proportion to their weights, so the preferred
    images fill the deficits evenly instead of creating a new majority.
    """

    def __init__(self, observed: Counter, values: list[str], target: dict[str, float] | None = None):
        total_target = sum((target or {}).values()) or 1.0
        shares = {v: (target or {}).get(v, 0.0) / total_target for v in values} if target else {v: 1 / len(values) for v in values}
        count = sum(observed[v] for v in values)
        observed_share = {v: (observed[v] / count if count else shares[v]) for v in values}
        self.target = shares
        self.observed = observed_share
        self.weights = {v: max(shares[v] - observed_share[v], 0.0) for v in values}
        self.surplus = {v for v in values if observed_share[v] > shares[v]}
        self._current = {v: 0.0 for v in values}

    def next(self) -> str | None:
        """The next preferred group, or None when no group is below target (nothing to correct)."""
        total = sum(self.weights.values())
        if total <= 0:
            return None
        for value, weight in self.weights.items():
            self._current[value] += weight
        chosen = max(self._current, key=lambda v: (self._current[v], -list(self._current).index(v)))
        self._current[chosen] -= total
        return chosen


@dataclass
class RiskJudge:
    name: str
    kind: str
    cfg: RiskConfig
    schedules: dict[Any, GroupSchedule] = field(default_factory=dict)  # stereotype: stratum -> schedule
    # A request task under the honour policy: the original image, which shows the requested content, is the
    # preferred one, and the corrected picture without it the rejected one.
    keeps_request: bool = False
    parent: str | None = None  # the risk a request task belongs to

    # ---- reading scorer outputs ---------------------------------------------------------------
    def _detector(self, scores: ScoreSet) -> dict[str, Any]:
        name = self.cfg.detector.scorer
        if name not in scores:
            raise ConfigError(f"risk {self.name}: scorer {name!r} produced no output for an image")
        return scores[name]

    def risk_score(self, scores: ScoreSet, record: PromptRecord) -> float:
        """Higher = more risk (best-of-N ranks by it). 0/1 for the categorical kinds."""
        det = self._detector(scores)
        if self.kind in ("exposure", "association"):
            key = self.cfg.detector.key
            if key not in det["scores"]:
                raise ConfigError(
                    f"risk {self.name}: scorer {self.cfg.detector.scorer!r} has no score {key!r} "
                    f"(it gives {sorted(det['scores'])})"
                )
            return float(det["scores"][key])
        attribute = self.cfg.detector.attribute
        if attribute not in det["labels"]:
            raise ConfigError(
                f"risk {self.name}: scorer {self.cfg.detector.scorer!r} has no label {attribute!r} "
                f"(it gives {sorted(det['labels'])})"
            )
        value = det["labels"][attribute]
        if self.kind == "misalignment":
            return float(value != self.requested(record))
        return float(value in self.schedule_for(record).surplus)

    def label(self, scores: ScoreSet) -> Any:
        return self._detector(scores)["labels"].get(self.cfg.detector.attribute)

    def requested(self, record: PromptRecord) -> Any:
        attribute = self.cfg.detector.attribute
        if attribute not in record.slots:
            raise ConfigError(
                f"risk {self.name}: misalignment needs prompts that request {attribute!r}; "
                f"prompt {record.prompt!r} has slots {sorted(record.slots)}"
            )
        return record.slots[attribute]

    def carries_risk(self, scores: ScoreSet, record: PromptRecord) -> bool:
        if self.kind in ("exposure", "association"):
            return self.risk_score(scores, record) >= self.cfg.detector.threshold
        return self.risk_score(scores, record) >= 1.0

    def is_safe(self, scores: ScoreSet, record: PromptRecord, wanted_group: str | None = None) -> bool:
        """Free of the risk; for stereotype: shows ``wanted_group`` (the scheduled group)."""
        if self.kind in ("exposure", "association"):
            return self.risk_score(scores, record) < self.cfg.detector.safe_threshold
        if self.kind == "misalignment":
            return self.risk_score(scores, record) == 0.0
        return wanted_group is not None and self.label(scores) == wanted_group

    def is_valid(self, scores: ScoreSet) -> bool:
        """The image is a usable picture at all (the alignment scorer's ``valid`` label, if any)."""
        name = self.cfg.alignment.scorer
        if name is None:
            return True
        return bool(scores[name]["labels"].get("valid", True))

    def is_aligned(self, scores: ScoreSet, wanted_slots: dict[str, Any]) -> bool:
        """Valid, every labelled slot honoured, and CLIP score high enough (as configured)."""
        align = self.cfg.alignment
        if align.scorer is None:
            return True
        out = scores[align.scorer]
        if not bool(out["labels"].get("valid", True)):
            return False
        if align.check_slots:
            for slot, value in wanted_slots.items():
                if slot in out["labels"] and out["labels"][slot] != value:
                    return False
        if align.min_clip_score is not None:
            if out["scores"].get("clip_score", 0.0) < align.min_clip_score:
                return False
        return True

    def keeps_attributes(self, preferred: ScoreSet, rejected: ScoreSet) -> str | None:
        """None if the two images read alike on every ``alignment.keep_attributes`` label (the risk's own
        attribute excepted), else the first label that differs."""
        align = self.cfg.alignment
        if align.scorer is None or not align.keep_attributes:
            return None
        a, b = preferred[align.scorer]["labels"], rejected[align.scorer]["labels"]
        for attribute in align.keep_attributes:
            if attribute != self.cfg.detector.attribute and a.get(attribute) != b.get(attribute):
                return attribute
        return None

    # ---- stereotype balance ---------------------------------------------------------------------
    def stratum(self, record: PromptRecord) -> Any:
        by = self.cfg.balance.stratify_by
        if by == "prompt":  # file prompts have no slots: balance each prompt on its own
            return record.prompt
        return record.slots.get(by) if by else None

    def fit_schedules(self, observations: list[tuple[PromptRecord, ScoreSet]], default_values: list[str]) -> None:
        """Measure the group distribution per stratum on valid original images; build schedules."""
        values = list(self.cfg.balance.values or default_values)
        if len(values) < 2:
            raise ConfigError(f"risk {self.name}: balance.values needs at least two groups, got {values}")
        counts: dict[Any, Counter] = {}
        for record, scores in observations:
            if self.is_valid(scores):
                counts.setdefault(self.stratum(record), Counter())[self.label(scores)] += 1
        self.schedules = {
            stratum: GroupSchedule(counter, values, self.cfg.balance.target or None)
            for stratum, counter in sorted(counts.items(), key=lambda kv: str(kv[0]))
        }

    def schedule_for(self, record: PromptRecord) -> GroupSchedule:
        stratum = self.stratum(record)
        if stratum not in self.schedules:
            values = list(self.cfg.balance.values) or ["?"]
            self.schedules[stratum] = GroupSchedule(Counter(), values, self.cfg.balance.target or None)
        return self.schedules[stratum]


# Risks an image carries whatever its prompt asks for: their detectors can judge any image, so every
# preferred image (and every retain image) is checked against all of them, not just its own risk's.
FLAGGING_KINDS = ("exposure", "association")


def flagged_by(scores: ScoreSet, record: PromptRecord, judges: list[RiskJudge]) -> str | None:
    """Name of the first exposure/association risk among ``judges`` whose detector flags the image."""
    for judge in judges:
        if judge.kind in FLAGGING_KINDS and judge.carries_risk(scores, record):
            return judge.name
    return None


def make_judge(name: str, cfg: RiskConfig, parent: str | None = None, keeps_request: bool = False) -> RiskJudge:
    return RiskJudge(name=name, kind=cfg.kind or name, cfg=cfg, keeps_request=keeps_request, parent=parent)


def make_judges(cfg) -> list[RiskJudge]:
    """One judge per curation task of a ``CurateConfig`` (risks and their request tasks)."""
    requests = cfg.request_tasks()
    return [make_judge(name, risk, parent=requests.get(name),
                       keeps_request=name in requests and cfg.risks[requests[name]].requested == "honour")
            for name, risk in cfg.tasks().items()]


def cross_risk_judges(judge: RiskJudge, judges: list[RiskJudge]) -> list[RiskJudge]:
    """The judges whose detectors a preferred image of ``judge`` must pass: every other task except the risk and
    its request task, which share a detector (a request pair's image shows the requested content by design)."""
    family = {judge.name, judge.parent} | {j.name for j in judges if j.parent == judge.name}
    return [j for j in judges if j.name not in family]
