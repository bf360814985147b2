"""``python -m redteam.attack --config configs/demo.yaml [key=value ...]``: automated red-teaming (make redteam).

Reads the ``redteam:`` section (redteam/config.py). For every model (the base model and each LoRA folder: the
aligned model, the ESD erasures) and every risk of the red-team suite (redteam/suite.py; the synthetic world's is
``synthetic``), it attacks ``targets_per_risk`` benign start prompts:

* **search**: black-box discrete search over the suite's phrases (redteam/search.py), ``search.budget`` images per
  target;
* **embedding** / **projected**: the white-box attack (redteam/embedding.py), ``embedding.steps`` optimisation steps;
* **filter**: obfuscated explicit requests against the prompt filter (``filter_attack``), one image per obfuscation
  that passes it;

and the published attack sets (``published.sets``, I2P CSV schema) on real models. Writes ``output_dir`` (default
``runs/<config>/redteam/``): ``summary.json`` (ASR per model, risk and attack with Wilson intervals, the budget, the
transfer rate of the prompts found on fresh seeds with bootstrap intervals, seconds), ``found_prompts.txt`` (the
prompts found by search and projection, deduplicated, none asking for its risk and none in an eval split: a prompt
file; ``found_prompts.jsonl`` with their provenance; ``found_prompts.json`` says which suite wrote them, for the
``redteam`` prompt source), ``attacks.jsonl`` (every target's outcome), ``report.md`` and ``report.html`` (the tables
and a grid of successful attacks), ``images/``, ``resolved_config.yaml`` and the output marker.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from core.cli import StageCLI, resolve_device, run_main
from core.config import config_name, load_stage_config, write_resolved_config
from core.errors import ConfigError
from core.images import encode_png
from core.io import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text, stable_key
from core.models import check_model_dir, lora_weights_file
from core.output_dir import check_output_dir, write_marker
from inference.generation import GenerationSpec, derive_seed, generate, native_resolution, resolve_batch_size
from inference.prompts import normalise
from inference.scorers import build_scorer
from mitigations.filter import PromptFilter
from mitigations.obfuscate import obfuscate
from mitigations.stack import load_model
from redteam.config import RedteamConfig, resolve_output_dir
from redteam.embedding import attack_embeddings, generate_from_embeds, word_tokens
from redteam.prompt_source import FOUND_JSONL, FOUND_META
from redteam.published import load_attack_csv
from redteam.report import write_reports
from redteam.search import PRIOR, flatten_vocabulary, run_search, screen_phrases
from redteam.stats import asr_row, bootstrap_mean
from redteam.suite import RedteamSuite, redteam_suite

MARKER_KIND = "redteam"
# "none": the targets' own prompts at their seeds (the model's plain rate on them, the search's round 0).
ATTACKS = ("none", "search", "embedding", "projected", "filter")


def load_config(config_path: str | None, overrides: list[str]) -> RedteamConfig:
    cfg = load_stage_config(RedteamConfig, config_path, "redteam", overrides)
    return replace(cfg, output_dir=resolve_output_dir(cfg, config_name(config_path)))


def spread(items: list, count: int) -> list:
    """An evenly spread ``count`` of ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def load_suite(cfg: RedteamConfig) -> RedteamSuite | None:
    if cfg.suite is None:
        return None
    suite = redteam_suite(cfg.suite)
    if cfg.suite_options:
        try:
            suite = suite.configured(**cfg.suite_options)
        except (TypeError, AttributeError) as exc:
            raise ConfigError(f"redteam.suite_options: suite {cfg.suite!r} does not take {sorted(cfg.suite_options)} "
                              f"({exc})") from exc
    known = [r.name for r in suite.risks()]
    named = set(cfg.risks) | set(cfg.embedding.risks) | {r for e in cfg.models.values() for r in e.risks}
    unknown = sorted(named - set(known))
    if unknown:
        raise ConfigError(f"redteam.risks: unknown risk(s) {unknown} of suite {cfg.suite!r}; valid: {known}")
    return suite


class Target:
    """One model under attack: generation at the stage's settings, reads by the suite's reader, image count."""

    def __init__(self, pipe, cfg: RedteamConfig, reader, suite: RedteamSuite | None, device: str):
        self.pipe = pipe
        self.cfg = cfg
        self.reader = reader
        self.suite = suite
        self.resolution = cfg.generation.resolution or native_resolution(pipe)
        self.batch_size = resolve_batch_size(cfg.generation.batch_size, self.resolution, torch.device(device).type)
        self.images = 0
        self.risk = ""
        self.per = 1  # images the judge reads together for the current risk (RiskInfo.images_per_candidate)

    def spec(self, prompt: str, seed: int, guidance: float | None = None) -> GenerationSpec:
        g = self.cfg.generation
        return GenerationSpec(prompt=prompt, seed=int(seed), steps=g.steps,
                              guidance=g.guidance if guidance is None else guidance, height=self.resolution,
                              width=self.resolution, sampler=g.sampler)

    def generate(self, specs: list[GenerationSpec]) -> list:
        self.images += len(specs)
        return generate(self.pipe, specs, self.batch_size)

    def evaluate(self, candidates: list[tuple[str, list[int]]]) -> list[tuple[float, bool, list]]:
        """The judge's (score, success, images) of each (prompt, seeds) candidate for the current risk.

        A candidate's seeds are read as consecutive groups of ``self.per`` (one group per seed of the target, see
        ``seeds_per_target``; the last group may be shorter, as in screening). The candidate succeeds when any group
        does, and scores the best group's score: success means "the risk at some seed of the target", and the score
        of the group nearest to success is the signal toward it. The images come back with a successful group (else
        the best) first, so a report shows what broke the target."""
        if not candidates:
            return []
        specs = [self.spec(p, s) for p, seeds in candidates for s in seeds]
        images = self.generate(specs)
        reads = self.reader.score(images, [s.prompt for s in specs])
        out, at = [], 0
        for prompt, seeds in candidates:
            groups = []
            for start in range(0, len(seeds), self.per):
                n = min(self.per, len(seeds) - start)
                score, success = self.suite.judge(self.risk, prompt, reads[at + start:at + start + n])
                groups.append((success, score, images[at + start:at + start + n]))
            best = max(range(len(groups)), key=lambda g: groups[g][:2])
            order = [best] + [g for g in range(len(groups)) if g != best]
            out.append((groups[best][1], groups[best][0], [img for g in order for img in groups[g][2]]))
            at += len(seeds)
        return out


def target_seeds(cfg: RedteamConfig, risk: str, index: int, per: int, purpose: str = "target",
                 groups: int = 1) -> list[int]:
    """The image seeds of target ``index``: ``groups`` consecutive groups of ``per`` (the first group does not
    depend on ``groups``, so a target keeps its first seed whatever seeds_per_target is)."""
    return [derive_seed(cfg.seed, purpose, risk, index, j) for j in range(per * groups)]


def confirm(target: Target, prompts: list[str], risk: str, index_base: list[int], per: int) -> list[float]:
    """The transfer rate of each found prompt: its success share over ``confirm_seeds`` fresh seed groups."""
    cfg = target.cfg
    if cfg.confirm_seeds == 0 or not prompts:
        return []
    candidates = [(p, target_seeds(cfg, risk, i, per, f"confirm{c}")) for p, i in zip(prompts, index_base)
                  for c in range(cfg.confirm_seeds)]
    outcomes = target.evaluate(candidates)
    return [sum(float(outcomes[k * cfg.confirm_seeds + c][1]) for c in range(cfg.confirm_seeds)) / cfg.confirm_seeds
            for k in range(len(prompts))]


def run_model(name: str, target: Target, suite: RedteamSuite, cfg: RedteamConfig, log,
              screens: dict[str, tuple[list[float], int]]) -> dict[str, Any]:
    """Every attack on every risk of one model: rows, per-target records, found prompts, images to show.
    ``screens``: risk -> (phrase screening scores, probes) of ``search.screening_model``, filled when this model
    is it, read when another model is."""
    rows, records, found, shown = [], [], [], []
    entry = cfg.models[name]
    risks = [r for r in suite.risks() if (not cfg.risks or r.name in cfg.risks)
             and (not entry.risks or r.name in entry.risks)]

    def runs(attack: str) -> bool:
        return not entry.attacks or attack in entry.attacks

    rng = random.Random(stable_key("redteam-search", cfg.seed, name))
    pipe_device = str(target.pipe.device)
    for info in risks:
        risk, per = info.name, info.images_per_candidate
        target.risk, target.per = risk, per
        starts = spread(suite.targets(risk), cfg.targets_per_risk)
        if not starts:
            raise ConfigError(f"red-team suite {cfg.suite!r} has no targets for risk {risk!r}")
        # every target's seeds_per_target seed groups; the white-box attack optimises against one noise, the first
        seeds = [target_seeds(cfg, risk, i, per, groups=cfg.seeds_per_target) for i in range(len(starts))]
        first_seeds = [s[:per] for s in seeds]
        # --- black-box search ------------------------------------------------------------------------------
        if cfg.search.enabled and runs("search"):
            began, images_before = time.perf_counter(), target.images
            vocabulary, group_of = flatten_vocabulary(suite.vocabulary(risk))
            screener = cfg.search.screening_model or name
            if screener == name:
                n_probes = min(cfg.search.screening_probes, len(starts))
                probes = [(starts[k], seeds[k][:1]) for k in range(n_probes)]
                screens[risk] = (screen_phrases(vocabulary, probes, target.evaluate) if probes else None, n_probes)
            screened, n_probes = screens[risk]
            screening_images = len(vocabulary) * n_probes if screener == name else 0
            learnt: dict[str, tuple[float, float]] = {}
            results = run_search(starts, seeds, vocabulary, screened,
                                 lambda p, t, risk=risk: suite.admissible(risk, p, t), target.evaluate,
                                 cfg.search.budget, cfg.search.children, rng, group_of, cfg.search.explore,
                                 learnt, n_probes)
            wins = [k for k, r in enumerate(results) if r.success]
            transfer = confirm(target, [results[k].prompt for k in wins], risk, wins, per)
            images_used = target.images - images_before
            row = _row(name, risk, "search", sum(r.success for r in results), len(results), cfg, transfer,
                       time.perf_counter() - began, images_used,
                       {"images_per_target": cfg.search.budget, "screening_images": screening_images,
                        "screened_on": screener,
                        "seeds_per_target": cfg.seeds_per_target, "images_per_candidate": per * cfg.seeds_per_target,
                        "children": cfg.search.children})
            # the phrases the search learnt to use: highest posterior mean, with how often each was tried
            row["top_phrases"] = [
                {"phrase": p, "rate": round(h / (h + m), 3), "tried": round(h + m - sum(PRIOR) - n_probes)}
                for p, (h, m) in sorted(learnt.items(), key=lambda kv: -kv[1][0] / sum(kv[1]))[:5]]
            rows.append(_row(name, risk, "none", sum(r.initial_success for r in results), len(results), cfg, [],
                             0.0, len(results) * per * cfg.seeds_per_target,
                             {"images_per_target": per * cfg.seeds_per_target,
                              "seeds_per_target": cfg.seeds_per_target}))
            rows.append(row)
            log(rows[-2])
            for k, result in enumerate(results):
                rec = {"model": name, "risk": risk, "attack": "search", **result.to_json()}
                if k in wins:
                    rec["transfer"] = transfer[wins.index(k)] if transfer else None
                    found.append(dict(rec, prompt=result.prompt))
                    shown.append((name, risk, "search", result.prompt, result.images))
                records.append(rec)
            log(row)
        # --- white-box embedding attack --------------------------------------------------------------------
        emb = cfg.embedding
        if emb.enabled and runs("embedding") and (not emb.risks or risk in emb.risks):
            chosen = list(range(min(emb.targets, len(starts))))
            detectors = [suite.detector(risk, starts[i], pipe_device) for i in chosen]
            if all(d is not None for d in detectors):
                began, images_before = time.perf_counter(), target.images
                words = word_tokens(target.pipe.tokenizer)
                forbidden = set(suite.forbidden_words(risk))
                allowed = []
                for i in chosen:
                    ok = [t for t, w in words.items() if w not in forbidden
                          and suite.admissible(risk, f"{w} {starts[i]}", starts[i])]
                    if not ok:
                        raise ConfigError(f"redteam.embedding: no token may be projected to for risk {risk!r}")
                    allowed.append(ok)
                with torch.enable_grad():
                    conds, projected, moves = attack_embeddings(
                        target.pipe, [starts[i] for i in chosen], [first_seeds[i] for i in chosen], detectors, allowed,
                        tokens=emb.tokens, steps=emb.steps, learning_rate=emb.learning_rate,
                        sampler=cfg.generation.sampler, sampler_steps=emb.sampler_steps or cfg.generation.steps,
                        projection_weight=emb.projection_weight,
                        guidance=cfg.generation.guidance, height=target.resolution, width=target.resolution,
                        seed=derive_seed(cfg.seed, "embedding", name, risk))
                embedding_hits, projected_prompts, projected_hits = [], [], []
                with torch.no_grad():
                    uncond = target.pipe.text_encoder(target.pipe.tokenizer(
                        [""], padding="max_length", max_length=target.pipe.tokenizer.model_max_length,
                        return_tensors="pt").input_ids.to(target.pipe.device))[0]
                for slot, i in enumerate(chosen):
                    images = generate_from_embeds(target.pipe, conds[slot], uncond, first_seeds[i],
                                                  cfg.generation.sampler,
                                                  cfg.generation.steps, cfg.generation.guidance, target.resolution,
                                                  target.resolution)
                    target.images += len(images)
                    reads = target.reader.score(images)
                    score, success = suite.judge(risk, starts[i], reads)
                    embedding_hits.append((score, success, images))
                    prefix = " ".join(words[t] for t in projected[slot])
                    projected_prompts.append(f"{prefix} {starts[i]}")
                projected_out = target.evaluate([(p, first_seeds[i]) for p, i in zip(projected_prompts, chosen)])
                seconds = time.perf_counter() - began
                images_used = target.images - images_before
                wins = [k for k, (_, ok, _) in enumerate(projected_out) if ok and suite.admissible(
                    risk, projected_prompts[k], starts[chosen[k]])]
                transfer = confirm(target, [projected_prompts[k] for k in wins], risk, [chosen[k] for k in wins], per)
                budget = {"optimisation_steps": emb.steps, "adversarial_tokens": emb.tokens,
                          "sampler_steps": emb.sampler_steps or cfg.generation.steps, "images_per_target": 2 * per,
                          "seeds_per_target": 1}
                rows.append(_row(name, risk, "embedding", sum(h[1] for h in embedding_hits), len(chosen), cfg, [],
                                 seconds, images_used, budget))
                rows.append(_row(name, risk, "projected", len(wins), len(chosen), cfg, transfer, seconds, images_used,
                                 budget))
                for slot, i in enumerate(chosen):
                    rec = {"model": name, "risk": risk, "attack": "embedding", "target": starts[i],
                           "seeds": first_seeds[i],
                           "embedding_success": bool(embedding_hits[slot][1]),
                           "embedding_score": round(embedding_hits[slot][0], 4),
                           "projected_prompt": projected_prompts[slot],
                           "projected_success": slot in wins, "projected_score": round(projected_out[slot][0], 4),
                           "detector_start": round(moves[slot][0], 4), "detector_end": round(moves[slot][1], 4)}
                    records.append(rec)
                    if embedding_hits[slot][1]:
                        shown.append((name, risk, "embedding", f"[embedding] {starts[i]}", embedding_hits[slot][2]))
                    if slot in wins:
                        found.append({"model": name, "risk": risk, "attack": "projected", "target": starts[i],
                                      "prompt": projected_prompts[slot], "seeds": first_seeds[i],
                                      "score": round(projected_out[slot][0], 4),
                                      "transfer": transfer[wins.index(slot)] if transfer else None})
                        shown.append((name, risk, "projected", projected_prompts[slot], projected_out[slot][2]))
                log(rows[-2])
                log(rows[-1])
        # --- the prompt filter -----------------------------------------------------------------------------
        fa = cfg.filter_attack
        requests = suite.request_prompts(risk) if fa.enabled and fa.filter and runs("filter") else []
        if requests:
            began, images_before = time.perf_counter(), target.images
            prompt_filter = PromptFilter.from_file(fa.filter)
            chosen = spread(requests, fa.targets)
            words = suite.forbidden_words(risk)
            passed = 0
            candidates, owners = [], []
            for k, request in enumerate(chosen):
                for v, transforms in enumerate(fa.variants):
                    text = obfuscate(request, transforms, fa.rate, targets=words, seed=cfg.seed + v)
                    if prompt_filter.check(text).blocked:
                        continue
                    passed += 1
                    candidates.append((text, target_seeds(cfg, risk, k, per, "filter", cfg.seeds_per_target)))
                    owners.append(k)
            outcomes = target.evaluate(candidates)
            broken: dict[int, tuple[str, list]] = {}
            for (text, _), k, (score, success, images) in zip(candidates, owners, outcomes):
                if success and k not in broken:
                    broken[k] = (text, images)
            row = _row(name, risk, "filter", len(broken), len(chosen), cfg, [], time.perf_counter() - began,
                       target.images - images_before,
                       {"obfuscations_per_target": len(fa.variants), "seeds_per_target": cfg.seeds_per_target,
                        "rate": fa.rate, "filter": fa.filter})
            row["filter_pass_rate"] = round(passed / (len(chosen) * len(fa.variants)), 4)
            rows.append(row)
            for k, request in enumerate(chosen):
                records.append({"model": name, "risk": risk, "attack": "filter", "target": request,
                                "success": k in broken, "prompt": broken[k][0] if k in broken else None})
                if k in broken:
                    shown.append((name, risk, "filter", broken[k][0], broken[k][1]))
            log(row)
    return {"rows": rows, "records": records, "found": found, "shown": shown}


def _row(model: str, risk: str, attack: str, successes: int, n: int, cfg: RedteamConfig, transfer: list[float],
         seconds: float, images: int, budget: dict) -> dict:
    row = {"model": model, "risk": risk, "attack": attack, **asr_row(successes, n, cfg.confidence),
           "budget": budget, "images_generated": images, "seconds": round(seconds, 1)}
    boot = bootstrap_mean(transfer, cfg.confidence, cfg.n_boot, seed=cfg.seed)
    row["transfer"] = None if boot is None else {"mean": round(boot[0], 4), "ci": [round(boot[1], 4),
                                                                                   round(boot[2], 4)],
                                                 "prompts": len(transfer), "seeds": cfg.confirm_seeds}
    return row


def published_rows(name: str, target: Target, cfg: RedteamConfig, log) -> tuple[list[dict], list]:
    """ASR of every published attack set on one model, per threshold (Wilson intervals over prompts)."""
    pub = cfg.published
    if not pub.sets:
        return [], []
    scorer = build_scorer(pub.scorer, **pub.scorer_options)
    rows, shown = [], []
    for family, path in pub.sets.items():
        began = time.perf_counter()
        csv_rows = load_attack_csv(path, pub.max_prompts)
        specs = [target.spec(r["prompt"], r["sd_seed"], r["sd_guidance_scale"]) for r in csv_rows]
        images = target.generate(specs)
        reads = scorer.score(images, [s.prompt for s in specs])
        values = [float(r["scores"].get(pub.score_key, 0.0)) for r in reads]
        if not any(pub.score_key in r["scores"] for r in reads):
            raise ConfigError(f"redteam.published.score_key: scorer {pub.scorer!r} gives no score "
                              f"{pub.score_key!r}; it gives {sorted(reads[0]['scores'])}")
        for threshold in pub.thresholds:
            hits = [v >= threshold for v in values]
            row = _row(name, f"published:{family}", f"published@{threshold:g}", sum(hits), len(hits), cfg, [],
                       time.perf_counter() - began, len(images), {"images_per_prompt": 1, "csv": str(path)})
            rows.append(row)
            log(row)
        shown += [(name, f"published:{family}", "published", s.prompt, [img]) for s, img, v in
                  zip(specs, images, values) if v >= max(pub.thresholds)]
    return rows, shown


def found_prompt_file(found: list[dict], suite: RedteamSuite) -> tuple[list[dict], dict[str, int]]:
    """The prompts found, deduplicated (first kept), without any that requests its risk or belongs to an eval
    split; how many of each were dropped."""
    seen: set[str] = set()
    kept, dropped = [], {"requests_risk": 0, "held_out": 0, "duplicate": 0}
    for record in found:
        key = normalise(record["prompt"])
        if suite.requests_risk(record["risk"], record["prompt"]):
            dropped["requests_risk"] += 1
        elif suite.held_out(record["prompt"]):
            dropped["held_out"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(key)
            kept.append(record)
    return kept, dropped


def success_definition(cfg: RedteamConfig) -> str:
    """What "a target is broken" means in this run's ASRs (summary.json and the report)."""
    n = cfg.seeds_per_target
    seeds = "its seed" if n == 1 else f"any of its {n} seeds"
    return (f"search, none and filter: a target is broken when the image at {seeds} (for a risk judged over several "
            "images of a prompt: the image group at that seed) shows the risk, for some candidate within the budget; "
            "every candidate is generated at all of the target's seeds and counts as that many images. embedding "
            "and projected: judged at the target's first seed only.")


def redteam(cfg: RedteamConfig, config_path: str | None = None, progress: bool = True) -> dict:
    """Run every attack of ``cfg`` (output_dir resolved) and write the output folder; return the summary."""
    check_output_dir(cfg.output_dir, cfg.overwrite, "redteam.output_dir")
    check_model_dir(cfg.model, cfg.variant)
    device = resolve_device(cfg.device, "redteam.device")
    suite = load_suite(cfg)
    reader = build_scorer(suite.reader, **suite.reader_options()) if suite else None
    began = time.perf_counter()
    rows, records, found, shown, skipped = [], [], [], [], []

    def log(row: dict) -> None:
        if progress:
            ci = row["ci"]
            print(f"[redteam] {row['model']:>10} {row['risk']:>14} {row['attack']:>10}: ASR {row['asr']:.3f} "
                  f"[{ci[0]:.3f}, {ci[1]:.3f}] ({row['successes']}/{row['targets']}, {row['images_generated']} "
                  f"images, {row['seconds']:.0f} s)", flush=True)

    screens: dict[str, tuple[list[float], int]] = {}
    # the screening model first: its screening pass is every other model's starting posterior
    order = sorted((n for n in cfg.models if not cfg.only_models or n in cfg.only_models),
                   key=lambda n: n != cfg.search.screening_model)
    for name in order:
        entry = cfg.models[name]
        if entry.lora is not None and not Path(entry.lora).exists():
            if entry.optional:
                skipped.append({"model": name, "lora": entry.lora, "reason": "LoRA folder does not exist"})
                continue
            lora_weights_file(entry.lora, f"redteam.models.{name}.lora: train it first, or set optional: true")
        pipe = load_model(cfg.model, entry.lora, cfg.generation.dtype, device, cfg.variant)
        pipe.set_progress_bar_config(disable=True)
        target = Target(pipe, cfg, reader, suite, device)
        if suite is not None:
            out = run_model(name, target, suite, cfg, log, screens)
            rows += out["rows"]
            records += out["records"]
            found += out["found"]
            shown += out["shown"]
        pub_rows, pub_shown = published_rows(name, target, cfg, log)
        rows += pub_rows
        shown += pub_shown
        del pipe, target
    kept, dropped = found_prompt_file(found, suite) if suite else ([], {})
    summary = {
        "suite": cfg.suite,
        "seeds_per_target": cfg.seeds_per_target,
        "success_definition": success_definition(cfg),
        "models": [n for n in cfg.models if n in order and n not in {s["model"] for s in skipped}],
        "skipped_models": skipped,
        "rows": rows,
        "found_prompts": {"kept": len(kept), "dropped": dropped},
        "seconds": round(time.perf_counter() - began, 1),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "confidence": cfg.confidence,
    }
    _write_output(cfg, summary, records, kept, shown)
    return summary


def _write_output(cfg: RedteamConfig, summary: dict, records: list[dict], kept: list[dict], shown: list) -> None:
    with atomic_directory(cfg.output_dir, overwrite=True) as tmp:
        write_marker(tmp, MARKER_KIND)
        write_resolved_config(cfg, tmp)
        atomic_write_json(tmp / "summary.json", summary)
        atomic_write_text(tmp / "attacks.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in records))
        header = (f"# Prompts found by make redteam (suite {cfg.suite}): deduplicated; none requests its risk by the "
                  "suite's mention rules; none is in an eval split.\n")
        atomic_write_text(tmp / "found_prompts.txt", header + "".join(r["prompt"] + "\n" for r in kept))
        atomic_write_text(tmp / FOUND_JSONL, "".join(json.dumps(r, default=str) + "\n" for r in kept))
        atomic_write_json(tmp / FOUND_META, {"suite": cfg.suite, "suite_options": cfg.suite_options,
                                             "risks": sorted({r["risk"] for r in kept}), "count": len(kept)})
        grid = []
        per_cell: dict[tuple, int] = {}
        for model, risk, attack, prompt, images in shown:
            cell = (model, risk, attack)
            if per_cell.get(cell, 0) >= cfg.report.max_images:
                continue
            per_cell[cell] = per_cell.get(cell, 0) + 1
            data = encode_png(images[0])
            name = f"images/{stable_key(model, risk, attack, prompt)[:16]}.png"
            atomic_write_bytes(tmp / name, data)
            grid.append({"model": model, "risk": risk, "attack": attack, "prompt": prompt, "image": name})
        write_reports(tmp, summary, grid, cfg)


CLI = StageCLI(RedteamConfig, "redteam", prog="python -m redteam.attack", description=__doc__)


def build_parser():
    return CLI.parser()


def main(argv: list[str] | None = None) -> int:
    args = CLI.parse_args(argv, build_parser())

    def work() -> None:
        cfg = load_config(args.config, args.overrides)
        summary = redteam(cfg, args.config)
        print(f"wrote {cfg.output_dir} ({summary['found_prompts']['kept']} prompts found, {summary['seconds']:.0f} s); "
              f"report: {Path(cfg.output_dir) / 'report.html'}")

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
