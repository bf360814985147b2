"""Pair strategies: best-of-N and minimal pair, run round by round until a risk has its pairs.

* **Best-of-N**: N seeds of the original prompt; the rejected image is the riskiest one that carries
  the risk, the preferred one the least risky safe and prompt-aligned one.
* **Minimal pair**: the same seed (same initial noise) twice; the rejected image from the original
  prompt, the preferred one from a corrective variant (a rewrite adding the safe attribute, a group
  from the balanced schedule, or a negative prompt). Kept only if the scorers confirm the preferred
  image is safe and aligned and the rejected one carries the risk.

The training caption is always the original benign prompt. Round r uses seeds ``r*N .. r*N+N-1`` of
every prompt; pairs are ordered by (round, prompt, seed) and the first ``target_pairs`` are kept, so
the result depends only on the config and the model, never on interruptions. A round is worked a block
of specs at a time, in the batches of whole-round calls, and generation stops as soon as those first
pairs are certain (:func:`_run_round`): the same pairs, from the same image bits, as finishing it.

Cross-risk check: a preferred image must also pass the detectors of the *other* exposure/association
risks (``others``). Without it a pair can prefer an image that carries another risk: on the synthetic
world 30 of 160 stereotype pairs preferred an affected-group figure beside a negative symbol over a
clean one, teaching the very association another risk's pairs remove.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ConfigError
from data_curation.config import MIRROR_SUFFIX, CorrectiveVariant, RiskConfig
from data_curation.risks import RiskJudge, flagged_by
from data_curation.workspace import Candidate, Workspace
from inference.generation import GenerationSpec, derive_seed, process_state
from inference.prompts import PromptRecord


@dataclass
class Pair:
    risk: str
    strategy: str
    caption: str  # the original benign prompt: the training caption
    preferred: Candidate
    rejected: Candidate
    order: tuple  # (round, prompt index, seed index[, group index]): the deterministic pair order
    similarity: float = float("nan")
    note: dict[str, Any] = field(default_factory=dict)
    record: PromptRecord | None = None  # the original prompt's record (slots, template)


def pixel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """How minimal a pair is: 1 - mean |a - b| / 255 over pixels and channels (1 = identical)."""
    if a.shape != b.shape:
        return float("nan")
    return float(1.0 - np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


def mirror_pair(pair: Pair, slot: str, scorer: str) -> Pair | None:
    """The pair's mirror: the same two images, the rejected one preferred, under the pair's prompt with ``slot``
    set to what the rejected image shows (``scorer``'s label of that name: ``exposed`` True, a symbol, a group).
    None when the label is missing or says nothing is shown, or the prompt source holds that request out for
    eval. Its task is ``<risk>_mirror``."""
    if pair.record is None:
        return None
    shown = pair.rejected.scores.get(scorer, {}).get("labels", {}).get(slot)
    if shown in (None, False, "none"):
        return None
    record = pair.record.requesting({slot: shown})
    if record is None:
        return None
    return Pair(risk=f"{pair.risk}{MIRROR_SUFFIX}", strategy=pair.strategy, caption=record.prompt,
                preferred=pair.rejected, rejected=pair.preferred, order=pair.order, similarity=pair.similarity,
                note={**pair.note, "mirror_of": pair.caption, "mirror_slot": slot}, record=record)


def original_spec(record: PromptRecord, seed_index: int, base: GenerationSpec, base_seed: int) -> GenerationSpec:
    """The seed depends on the prompt and index only, so risks sharing a prompt share its images."""
    return GenerationSpec(
        prompt=record.prompt,
        negative_prompt=base.negative_prompt,
        seed=derive_seed(base_seed, record.prompt, seed_index),
        steps=base.steps,
        guidance=base.guidance,
        height=base.height,
        width=base.width,
        sampler=base.sampler,
    )


def _fill(template: str, record: PromptRecord, group: str | None) -> str:
    values = {**{k: v for k, v in record.slots.items()}, "prompt": record.prompt, "group": group or ""}
    try:
        return template.format(**values)
    except (KeyError, IndexError) as exc:
        raise ConfigError(
            f"corrective template {template!r} uses {exc} which prompt {record.prompt!r} does not provide "
            f"(available: {sorted(values)})"
        ) from exc


def corrective_spec(
    original: GenerationSpec, record: PromptRecord, variant: CorrectiveVariant, group: str | None
) -> tuple[GenerationSpec, dict[str, Any]]:
    """The preferred image's spec (same seed = same initial noise) and the slots it should show."""
    changes = {
        slot: _fill(value, record, group) if isinstance(value, str) else value
        for slot, value in variant.set_slots.items()
    }
    prompt = record.render(changes) if changes else record.prompt
    if variant.rewrite:
        prompt = _fill(variant.rewrite, PromptRecord(prompt, record.slots, record.template_id, record.template, record.family, record.source), group)
    negative = _fill(variant.negative_prompt, record, group) if variant.negative_prompt else original.negative_prompt
    spec = GenerationSpec(
        prompt=prompt,
        negative_prompt=negative,
        seed=original.seed,  # same seed = same initial noise: the pair differs only by the correction
        steps=original.steps,
        guidance=original.guidance if variant.guidance is None else variant.guidance,
        height=original.height,
        width=original.width,
        sampler=original.sampler,
    )
    return spec, {**record.slots, **changes}


def _wanted_groups(judge: RiskJudge, record: PromptRecord) -> list[str | None]:
    """The groups a risky image is corrected to: [None] for risks other than stereotype; the next group
    of the stratum's schedule; [] if none."""
    if judge.kind != "stereotype":
        return [None]
    schedule = judge.schedule_for(record)
    wanted = schedule.next()
    return [] if wanted is None else [wanted]


def best_of_n_round(
    ws: Workspace, judge: RiskJudge, originals: list[tuple[tuple, PromptRecord, Candidate]],
    others: list[RiskJudge] = (),
) -> list[Pair]:
    """Pick (preferred, rejected) among each prompt's N images of this round."""
    by_prompt: dict[tuple, list[tuple[tuple, PromptRecord, Candidate]]] = {}
    for order, record, cand in originals:
        by_prompt.setdefault(order[:2], []).append((order, record, cand))
    pairs = []
    for group_key, items in by_prompt.items():
        record = items[0][1]
        valid = [(o, c) for o, _, c in items if judge.is_valid(c.scores)]
        risky = [(o, c) for o, c in valid if judge.carries_risk(c.scores, record)]
        if not risky:
            continue
        groups = _wanted_groups(judge, record)
        if not groups:
            continue
        wanted = groups[0]
        safe = [
            (o, c) for o, c in valid
            if judge.is_safe(c.scores, record, wanted) and judge.is_aligned(c.scores, {**record.slots, **({"group": wanted} if wanted else {})})
            and flagged_by(c.scores, record, others) is None
        ]
        rejected_order, rejected = max(risky, key=lambda oc: (judge.risk_score(oc[1].scores, record), -oc[0][2]))
        safe = [(o, c) for o, c in safe if c.key != rejected.key and judge.keeps_attributes(c.scores, rejected.scores) is None]
        if not safe:
            continue
        preferred_order, preferred = min(safe, key=lambda oc: (judge.risk_score(oc[1].scores, record), oc[0][2]))
        margin = judge.risk_score(rejected.scores, record) - judge.risk_score(preferred.scores, record)
        if margin < judge.cfg.min_margin:
            continue
        pairs.append(
            Pair(judge.name, "best_of_n", record.prompt, preferred, rejected, order=min(preferred_order, rejected_order),
                 similarity=pixel_similarity(ws.image(preferred.key), ws.image(rejected.key)),
                 note={"margin": margin, **({"preferred_group": wanted} if wanted else {})}, record=record)
        )
    return pairs


@dataclass
class _Pending:
    """A risky original waiting for its next corrective variant."""

    order: tuple  # the pair order it would get: (round, prompt, seed, group index)
    origin: int  # index of its original in the round's plan
    record: PromptRecord
    cand: Candidate
    wanted: str | None


def _correct(
    ws: Workspace, judge: RiskJudge, pending: list[_Pending], variant_index: int, outcomes: Counter,
    others: list[RiskJudge],
) -> tuple[list[tuple[int, Pair]], list[_Pending]]:
    """Corrective variant ``variant_index`` for ``pending``: the confirmed pairs (with their origin) and
    the items still unfixed. ``outcomes`` counts why corrective images were refused (``still_risky``,
    ``not_aligned``, ``too_different``, ``flagged_<other risk>``) per variant, for the card."""
    variant = judge.cfg.corrective[variant_index]
    planned = [corrective_spec(p.cand.spec, p.record, variant, p.wanted) for p in pending]
    fixed = ws.realise([spec for spec, _ in planned], [p.record.prompt for p in pending],
                       desc=f"{judge.name} corrective {variant_index}")
    pairs, still = [], []
    for item, (spec, wanted_slots), preferred in zip(pending, planned, fixed):
        record, cand, wanted = item.record, item.cand, item.wanted
        safe = judge.is_safe(preferred.scores, record, wanted)
        aligned = safe and judge.is_aligned(preferred.scores, wanted_slots)
        if aligned and judge.keeps_request:  # the original is the preferred image: it must honour its prompt
            aligned = judge.is_aligned(cand.scores, record.slots)
        changed = judge.keeps_attributes(preferred.scores, cand.scores) if aligned else None
        # honour: the original, which shows the requested content, is preferred over the corrected picture
        better, worse = (cand, preferred) if judge.keeps_request else (preferred, cand)
        other_risk = flagged_by(better.scores, record, others) if aligned and changed is None else None
        clean = aligned and changed is None and other_risk is None
        similarity = pixel_similarity(ws.image(preferred.key), ws.image(cand.key)) if clean else float("nan")
        if clean and similarity >= judge.cfg.min_similarity:
            note = {"variant": variant_index, **({"preferred_group": wanted} if wanted else {})}
            if judge.keeps_request:
                note["keeps_request"] = True
            pairs.append((item.origin, Pair(judge.name, "minimal_pair", record.prompt, better, worse, item.order,
                                            similarity, note, record)))
            outcomes[f"variant{variant_index}:confirmed"] += 1
        else:
            reason = ("still_risky" if not safe else "not_aligned" if not aligned
                      else f"changed_{changed}" if changed
                      else f"flagged_{other_risk}" if other_risk else "too_different")
            outcomes[f"variant{variant_index}:{reason}"] += 1
            still.append(item)
    return pairs, still


def _block_size(ws: Workspace) -> int:
    """Specs per ``realise`` call: whole generation batches, one per process, and whole scoring chunks.

    Cut at multiples of it, a list is generated and scored in exactly the batches of one ``realise`` call
    over the whole list (``make_batches`` slices each list in order; so does the scoring), so an image's
    bits do not depend on the block size, on the number of processes or on where a round stopped.
    """
    batch = getattr(ws, "batch_size", None)
    if batch is None:  # a workspace without batches (test fakes): any block computes the same values
        return 1

    return math.lcm(batch * process_state().num_processes, getattr(ws, "score_batch_size", 1))


def _run_round(
    ws: Workspace, judge: RiskJudge, prompts: list[PromptRecord], round_index: int, base: GenerationSpec,
    base_seed: int, block: int, needed: int | None, outcomes: Counter, others: list[RiskJudge],
    fit_groups: list[str] | None,
) -> tuple[list[Pair], int, int]:
    """One round, a block at a time; returns (pairs found, originals generated, originals carrying the risk).

    Work lists: the round's originals (prompt-major, so in pair order), and per corrective variant the
    images waiting for it (risky originals, then those the previous variant did not fix), in the same
    order. Each call realises the next ``block`` specs of one list: of the deepest variant that has a full
    block, or its remainder once nothing can be added to it any more, else of the originals. The batches
    are those of the whole round's one call per list (see :func:`_block_size`), so the images and scores,
    hence every decision, are the ones of finishing the round.

    After every call the round stops once ``needed`` pairs are known among its *finished* originals (those
    before the first original with a corrective still to try): any other pair would come from a later
    original, so it would have a larger order and not be among the first ``target_pairs``. ``needed`` None:
    finish the round. Every process sees the same cached scores, so all stop at the same call.
    ``fit_groups`` (stereotype, round 0): the group schedules are fit on all of the round's originals, so
    those are generated first in one call (as whole rounds did); only the correctives can stop early.
    """
    cfg = judge.cfg
    n = cfg.images_per_prompt
    plan = [(p, s) for p in range(len(prompts)) for s in range(round_index * n, (round_index + 1) * n)]
    total = len(plan)
    variants = len(cfg.corrective) if cfg.strategy == "minimal_pair" else 0
    originals: list[Candidate] = []
    queues: list[list[_Pending]] = [[] for _ in range(variants)]  # queues[v]: waiting for variant v
    done = [0] * variants  # queues[v][:done[v]] have had variant v
    found: list[tuple[int, Pair]] = []  # (origin, pair)
    judged = 0  # originals[:judged] are judged (counted, and queued for correction or paired)
    risky = 0

    def realise_originals(end: int) -> None:
        part = plan[len(originals):end]
        specs = [original_spec(prompts[p], s, base, base_seed) for p, s in part]
        captions = [prompts[p].prompt for p, _ in part]
        originals.extend(ws.realise(specs, captions, desc=f"{judge.name} round {round_index}"))

    def judge_originals() -> None:
        nonlocal judged, risky
        end = len(originals) if cfg.strategy == "minimal_pair" else len(originals) // n * n  # best-of-N: whole prompts
        batch = [((round_index, *plan[i]), prompts[plan[i][0]], originals[i]) for i in range(judged, end)]
        risky += sum(1 for _, r, c in batch if judge.is_valid(c.scores) and judge.carries_risk(c.scores, r))
        if cfg.strategy == "best_of_n":
            found.extend((judged, pair) for pair in best_of_n_round(ws, judge, batch, others))
        else:
            for i, (order, record, cand) in zip(range(judged, end), batch):
                if queues and judge.is_valid(cand.scores) and judge.carries_risk(cand.scores, record):
                    for k, wanted in enumerate(_wanted_groups(judge, record)):
                        queues[0].append(_Pending((*order, k), i, record, cand, wanted))
        judged = end

    def finished() -> int:
        """Originals before this index have every pair they can give decided."""
        first = judged
        for queue, d in zip(queues, done):
            if d < len(queue):
                first = min(first, queue[d].origin)
        return first

    if fit_groups is not None:
        realise_originals(total)
        judge.fit_schedules([(prompts[p], c.scores) for (p, _), c in zip(plan, originals)], fit_groups)
    while (upto := finished()) < total:
        if needed is not None and sum(1 for origin, _ in found if origin < upto) >= needed:
            break
        for v in reversed(range(variants)):
            queue, d = queues[v], done[v]
            complete = judged == total and all(done[u] == len(queues[u]) for u in range(v))  # nothing more to come
            if len(queue) - d >= block or (complete and len(queue) > d):
                end = min(d + block, len(queue))
                pairs, still = _correct(ws, judge, queue[d:end], v, outcomes, others)
                found.extend(pairs)
                if v + 1 < variants:
                    queues[v + 1].extend(still)
                done[v] = end
                break
        else:  # no variant has a full block: the next block of originals
            if len(originals) < total:
                realise_originals(min(len(originals) + block, total))
            judge_originals()
    return [pair for _, pair in found], len(originals), risky


def curate_risk(
    ws: Workspace,
    judge: RiskJudge,
    prompts: list[PromptRecord],
    base: GenerationSpec,
    base_seed: int,
    default_groups: list[str] | None = None,
    others: list[RiskJudge] = (),
    stop_early: bool = True,
) -> tuple[list[Pair], dict[str, Any]]:
    """All rounds for one risk; returns the first ``target_pairs`` pairs and what it took.
    ``others``: the other risks' judges, whose detectors every preferred image must pass.

    ``stop_early`` (default): stop generating as soon as the first ``target_pairs`` pairs are certain, part
    way through a round (:func:`_run_round`); the pairs are exactly those of ``stop_early=False``, which
    finishes every round it starts (tests compare them). The report's counts describe the work done."""
    cfg: RiskConfig = judge.cfg
    pairs: list[Pair] = []
    rounds_run = 0
    originals_seen = 0
    risky_seen = 0
    outcomes: Counter = Counter()
    block = _block_size(ws)
    for round_index in range(cfg.max_rounds):
        fit = (default_groups or []) if judge.kind == "stereotype" and round_index == 0 else None
        found, generated, risky = _run_round(
            ws, judge, prompts, round_index, base, base_seed, block,
            cfg.target_pairs - len(pairs) if stop_early else None, outcomes, others, fit,
        )
        pairs += found
        originals_seen += generated
        risky_seen += risky
        rounds_run += 1
        if len(pairs) >= cfg.target_pairs:
            break
    pairs.sort(key=lambda p: p.order)
    kept = pairs[: cfg.target_pairs]
    info = {
        "strategy": cfg.strategy,
        "prompts": len(prompts),
        "rounds": rounds_run,
        "original_images": originals_seen,
        "originals_with_risk": risky_seen,
        "risk_rate_in_originals": round(risky_seen / originals_seen, 4) if originals_seen else None,
        "pairs_found": len(pairs),
        "pairs_kept": len(kept),
        "target_pairs": cfg.target_pairs,
    }
    if outcomes:
        info["corrective_outcomes"] = dict(sorted(outcomes.items()))
    if judge.kind == "stereotype":
        info["group_balance"] = {
            str(stratum): {"observed": s.observed, "target": s.target, "surplus": sorted(s.surplus)}
            for stratum, s in judge.schedules.items()
        }
        counts: dict[str, int] = {}
        for p in kept:
            g = p.note.get("preferred_group")
            counts[g] = counts.get(g, 0) + 1
        info["preferred_groups"] = counts
    return kept, info
