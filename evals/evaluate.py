"""``make eval``: paired before/after evaluation of the base model, the DPO-aligned model and two
post-training baselines, with bootstrap CIs, written to ``runs/<config name>/eval/``.

    python -m evals.evaluate --config configs/demo.yaml [--key value | key=value ...]

Steps: check inputs (model, LoRA, leakage) -> generate every model's images with the same seeds
(resumable store) -> score them (cached by image key) -> metrics -> summary.json, report.html, PNGs
-> console table.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object

from core import plugins
from core.cli import StageCLI, resolve_device, run_main
from core.clip import clip_score, load_clip
from core.config import config_name, load_stage_config, to_dict, write_resolved_config
from core.errors import ConfigError
from core.io import atomic_write_json, stable_key
from core.models import LORA_WEIGHT_NAME, check_model_dir, load_pipeline
from evals.config import EvalConfig
from evals.i2p import SCORE_KEYS, clip_rows, ip_rows, load_captions, load_i2p_csv
from evals.metric_rows import ModelImages
from evals.metrics import sample_size_label
from evals.mitigation_models import (
    ESD_MODELS,
    GUARDED_MODELS,
    MITIGATION_MODELS,
    REFUSED,
    REFUSING_MODELS,
    check_esd_dir,
    esd_dir,
    refusal_read,
)
from evals.mitigation_runs import CostBook, GuardedRun, Stopwatch, cost_section, generate_sld, run_guarded
from evals.prompt_sets import check_disjoint, curation_prompts_from_config, curation_prompts_from_preference_set
from evals.report import ImageGrid, console_table, write_report
from evals.runner import (
    EvalSession,
    ModelVariant,
    check_lora_dir,
    is_flagged,
    make_items,
)
from evals.stack_table import dpo_position, model_bar, refusal_row
from evals.suite import EvalSuite, eval_suite_of
from inference.generation import model_fingerprint, native_resolution, resolve_batch_size
from inference.scorers import build_scorer, check_scorer_name
from inference.speedups import prepare_pipeline, use_fast_paths


CLI = StageCLI(EvalConfig, "eval", prog="python -m evals.evaluate", description=__doc__, config_required=True)


def build_parser():
    return CLI.parser()


class LazyScorer:
    """Builds its model on first use, so a fully cached (resumed) eval loads no scorer at all."""

    def __init__(self, build):
        self._build = build
        self._fn = None

    def __call__(self, images, prompts):
        if self._fn is None:
            self._fn = self._build()
        return self._fn(images, prompts)


# The scorers the i2p path configures (eval.i2p); an eval suite configures its own (EvalSuite.scorer_options).
I2P_SCORERS = ("nudenet", "clip")


def build_scorer_fn(name: str, cfg: EvalConfig, device: str):
    """(cache id, lazy score function) for scorer ``name`` configured from ``cfg``."""

    check_scorer_name(name)
    suite = eval_suite_of(cfg)
    suite_options = suite.scorer_options(name, cfg) if suite is not None else None
    if suite_options is not None:
        kwargs = suite_options
    elif name == "nudenet":
        thresholds = sorted(cfg.i2p.thresholds)
        kwargs = {"threshold": thresholds[0], "report_thresholds": thresholds}
        if cfg.i2p.nudenet_classes:
            kwargs["classes"] = list(cfg.i2p.nudenet_classes)
    else:
        kwargs = {"path": cfg.clip_path, "model_name": cfg.clip_model_name, "device": device,
                  "concepts": {"inappropriate": {"positive": cfg.i2p.inappropriate_positive,
                                                 "negative": cfg.i2p.inappropriate_negative,
                                                 "threshold": min(cfg.i2p.thresholds)}}}
    scorer_id = f"{name}-{stable_key(name, kwargs)[:10]}"

    def build():

        scorer = build_scorer(name, **kwargs)
        return lambda images, prompts: scorer.score(images)

    return scorer_id, LazyScorer(build)


def build_clip_fn(cfg: EvalConfig, device: str):
    """(cache id, lazy CLIP-score function): max(100 cos, 0) with the configured local CLIP."""
    scorer_id = f"clipscore-{stable_key(cfg.clip_path, cfg.clip_model_name)[:10]}"

    def build():

        bundle = load_clip(cfg.clip_path, cfg.clip_model_name, device=device)
        return lambda images, prompts: [
            {"scores": {"clip_score": float(s)}, "labels": {}} for s in clip_score(bundle, images, list(prompts))
        ]

    return scorer_id, LazyScorer(build)


# scorer -> (importable module, pip package) it needs.
SCORER_PACKAGES = {"nudenet": ("nudenet", "nudenet"), "clip": ("open_clip", "open_clip_torch")}


def require_scorer(name: str) -> None:
    """ConfigError before any work starts if scorer ``name`` needs a package that is not installed."""


    check_scorer_name(name)
    if name in SCORER_PACKAGES:
        module, package = SCORER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"the config asks for the {name!r} scorer, but its package {package!r} is not installed; "
                f"install it with `pip install {package}` or choose another scorer"
            )


def build_variants(cfg: EvalConfig, lora_dir: Path | None,
                   esd_dirs: dict[str, Path] | None = None) -> dict[str, ModelVariant]:

    variants = {"base": ModelVariant("base")}
    for name, folder in (esd_dirs or {}).items():
        variants[name] = ModelVariant(name, folder, adapter_id=model_fingerprint(folder / LORA_WEIGHT_NAME))
    if "negative_prompt" in cfg.models:
        variants["negative_prompt"] = ModelVariant("negative_prompt", negative_prompt=", ".join(cfg.negative_prompts))
    if "aligned" in cfg.models:
        variants["aligned"] = ModelVariant("aligned", lora_dir,
                                           adapter_id=model_fingerprint(lora_dir / LORA_WEIGHT_NAME))
    return variants


def esd_dirs_of(cfg: EvalConfig, run_name: str, config_path: str | None = None) -> dict[str, Path]:
    """The erasure LoRA folder of every esd_* configuration in eval.models, each checked."""
    return {name: check_esd_dir(esd_dir(cfg, name, run_name), name, config_path)
            for name in cfg.models if name in ESD_MODELS}


def check_inputs(cfg: EvalConfig, run_name: str, config_path: str | None = None) -> tuple[Path, Path | None]:
    """Fail fast on bad input, before any model is loaded."""
    check_model_dir(cfg.model, cfg.variant)
    lora_dir = Path(cfg.lora or f"runs/{run_name}/lora")
    if "aligned" in cfg.models:
        check_lora_dir(lora_dir)
    esd_dirs_of(cfg, run_name, config_path)
    suite = eval_suite_of(cfg)
    if suite is None and "filter_regenerate" in cfg.models and cfg.filter.scorer not in I2P_SCORERS:
        reads = plugins.registration("scorer", cfg.filter.scorer).info.get("reads", "the images of its own eval suite")
        raise ConfigError(f"eval.filter.scorer={cfg.filter.scorer} only reads {reads}; use "
                          f"{' or '.join(I2P_SCORERS)} for i2p")
    scorers = {"clip"} if suite is not None or cfg.i2p.captions else set()
    scorers |= {suite.reader} if suite is not None else ({cfg.i2p.scorer} if cfg.i2p.csv else set())
    if "filter_regenerate" in cfg.models:
        scorers.add(cfg.filter.scorer)
    for name in sorted(scorers):
        require_scorer(name)
    return Path(cfg.output_dir or f"runs/{run_name}/eval"), (lora_dir if "aligned" in cfg.models else None)


def baseline_item_indices(items, seeds_per_prompt: int | None) -> list[int]:
    """Indices of the items the baselines are generated for: each prompt's first ``seeds_per_prompt`` seeds
    (None: every item)."""
    return [i for i, it in enumerate(items) if seeds_per_prompt is None or it.seed_index < seeds_per_prompt]


def spread(values: list, indices: list[int], length: int) -> list:
    """``values`` placed at ``indices`` of a list of ``length``, None elsewhere (an image a model did not make)."""
    out = [None] * length
    for i, value in zip(indices, values):
        out[i] = value
    return out


@dataclass
class Generated:
    """Every configuration's images: keys per model in item order (None where a configuration did not run the
    item, ``baseline_seeds_per_prompt``), why an item has no usable image (refusals: blocked, blurred, refused; only
    the configurations that can refuse), the filter baseline's outcome."""

    keys: dict[str, list]
    filter_outcome: object = None
    refusals: dict[str, list] = field(default_factory=dict)


def generate_all(session: EvalSession, cfg: EvalConfig, items, variants, filter_scorer, with_filter: bool = True,
                 costs: CostBook | None = None, out_dir: Path | None = None) -> Generated:
    """Image keys per model, in item order (None where a baseline skips the item: ``baseline_seeds_per_prompt``).
    Base-weight configurations first, then each LoRA (erasures, then the DPO LoRA and the stack over it); the guarded
    configurations last, each whole on one process (dealt out over the processes).
    ``costs`` records what each configuration's generation took."""
    costs = costs if costs is not None else CostBook(None)
    picked = baseline_item_indices(items, cfg.baseline_seeds_per_prompt)
    baseline_items = [items[i] for i in picked]

    def timed(name, run_items, variant, desc, generate=None):
        watch = Stopwatch(session)
        made = generate() if generate else session.generate(run_items, variant, desc=desc)
        seconds, images = watch.stop()
        costs.record(name, seconds=seconds, images=images, requests=len(run_items),
                     identity=stable_key(variant.adapter_id if variant else name, len(run_items)))
        return made

    keys = {"base": timed("base", items, variants["base"], "base")}
    if "negative_prompt" in variants:
        made = timed("negative_prompt", baseline_items, variants["negative_prompt"], "negative prompts")
        keys["negative_prompt"] = spread(made, picked, len(items))
    filter_outcome = None
    if with_filter and "filter_regenerate" in cfg.models:
        scorer_id, score_fn = filter_scorer
        watch = Stopwatch(session)
        filter_outcome = session.filter_regenerate(
            baseline_items, variants["base"], [keys["base"][i] for i in picked], scorer_id, score_fn,
            cfg.filter.flag_labels, cfg.filter.max_retries,
        )
        seconds, images = watch.stop()
        costs.record("filter_regenerate", seconds=seconds, images=images, requests=len(baseline_items),
                     extra_generations=filter_outcome.extra_generations,
                     identity=stable_key(scorer_id, cfg.filter.max_retries, len(baseline_items)))
        keys["filter_regenerate"] = spread([r.key for r in filter_outcome.records], picked, len(items))
    if "sld" in cfg.models:
        sld_variant = ModelVariant("sld", adapter_id="sld-" + cfg.sld.key())
        made = timed("sld", baseline_items, sld_variant, "sld",
                     generate=lambda: generate_sld(session, baseline_items, cfg.sld, ModelVariant))
        keys["sld"] = spread(made, picked, len(items))
    for name in ESD_MODELS:
        if name in variants:
            session.use_adapter(variants[name].adapter_dir)
            keys[name] = spread(timed(name, baseline_items, variants[name], name), picked, len(items))
            session.use_base()
    refusals: dict[str, list] = {}
    guarded = [name for name in GUARDED_MODELS if name in cfg.models]
    # A guarded configuration runs whole on one process (the rewriter's group schedule depends on the order of the
    # prompts it has seen, so splitting one would change it); with several processes the configurations are dealt
    # out, and every process gets the others' runs afterwards.
    processes, rank = session.state.num_processes, session.state.process_index
    mine = [name for i, name in enumerate(guarded) if i % processes == rank]
    runs: dict[str, GuardedRun] = {}

    def run_stack(name, adapter_id):
        runs[name] = run_guarded(session, name, cfg, baseline_items, adapter_id,
                                 out_dir or session.store.folder.parent)

    if "aligned" in variants:
        session.use_adapter(variants["aligned"].adapter_dir)
        keys["aligned"] = timed("aligned", items, variants["aligned"], "aligned")
        if "dpo_stack" in mine:
            run_stack("dpo_stack", variants["aligned"].adapter_id)
    if any(name != "dpo_stack" for name in mine):
        if "aligned" in variants:
            session.use_base()
        for name in mine:
            if name != "dpo_stack":
                run_stack(name, None)
    if processes > 1 and guarded:
        for gathered in gather_object([{name: asdict(run) for name, run in runs.items()}]):
            runs.update({name: GuardedRun(**run) for name, run in gathered.items()})
    for name in guarded:
        run = runs[name]
        costs.record(name, seconds=run.seconds, images=run.tries if run.generated else 0,
                     requests=len(baseline_items), extra_generations=run.extra_generations, identity=run.identity,
                     per_request=True, outcomes=run.outcomes, latency_ms_by_layer=run.latency_ms)
        keys[name] = spread(run.keys, picked, len(items))
        if name in REFUSING_MODELS or any(run.refusals):
            refusals[name] = spread(run.refusals, picked, len(items))
    order = [name for name in cfg.models if name in keys]
    return Generated({name: keys[name] for name in order}, filter_outcome, refusals)


def filter_section(cfg: EvalConfig, outcome) -> dict | None:
    if outcome is None:
        return None
    images = len(outcome.records)
    return {
        "scorer": cfg.filter.scorer,
        "flag_rule": "any of the labels " + ", ".join(cfg.filter.flag_labels) + " is set",
        "max_retries": cfg.filter.max_retries,
        "images": images,
        "extra_generations": outcome.extra_generations,
        "extra_generations_per_image": outcome.extra_generations / max(1, images),
        "flagged_first_try_rate": outcome.flagged_first / max(1, images),
        "residual_flagged_rate": outcome.residual_flagged / max(1, images),
        "attempts_histogram": outcome.attempts_histogram,
    }


def baseline_comparison(rows: list[dict], split: str | None = None) -> list[dict]:
    """Per risk and baseline: aligned − baseline (paired CI) and whether DPO beats, ties or loses to it."""
    out = []
    for row in rows:
        if not row.get("improvement"):
            continue
        for baseline, diff in row.get("aligned_vs_baselines", {}).items():
            better = (-diff["value"] if row["direction"] == "lower" else diff["value"]) > 0
            verdict = "ties" if not diff["excludes_zero"] else ("beats" if better else "loses to")
            out.append({"metric": row["id"], "title": row["short"], "baseline": baseline, "difference": diff,
                        "verdict": verdict, **({"split": split} if split else {})})
    return out


def score_made(session, scorer, model_keys: list, items, desc: str) -> list:
    """Scores of a model's images in item order, None where it made none (a baseline at fewer seeds)."""
    scorer_id, score_fn = scorer
    made = [i for i, k in enumerate(model_keys) if k is not None]
    prompts = {model_keys[i]: items[i].prompt for i in made}
    scores = session.score_on_main(scorer_id, score_fn, [model_keys[i] for i in made], prompts, desc=desc)
    return spread(scores, made, len(model_keys))


def suite_results(session, cfg, suite: EvalSuite, items, keys, device, refusals: dict | None = None):
    """The suite reader's reads and the CLIP scores of every model's images, in item order. A refused item
    (``refusals[model][i]``: blocked, blurred, refused) reads as nothing shown with CLIP score 0
    (evals/mitigation_models.py says why)."""
    reader = build_scorer_fn(suite.reader, cfg, device)
    clip = build_clip_fn(cfg, device)
    results = {}
    for name, model_keys in keys.items():
        refused = (refusals or {}).get(name) or [None] * len(model_keys)
        usable = [None if why else key for key, why in zip(model_keys, refused)]
        reads = [s and s["labels"] for s in score_made(session, reader, usable, items, desc=f"{suite.reader} {name}")]
        clip_scores = [s and s["scores"]["clip_score"]
                       for s in score_made(session, clip, usable, items, desc=f"clip {name}")]
        for i, why in enumerate(refused):
            if why:
                reads[i], clip_scores[i] = refusal_read(why), 0.0
        results[name] = ModelImages(reads, clip_scores)
    return results


def suite_grids(session, cfg, suite: EvalSuite, items, records, keys, results) -> list[ImageGrid]:
    """Per family: the first prompts at their first seed, one row per model (same seeds)."""
    grids = []
    resolution = session.resolution
    blank = np.full((resolution, resolution, 3), 128, dtype=np.uint8)  # a blocked prompt's cell
    families = list(dict.fromkeys(r["family"] for r in records))  # in the suite's order
    for split, family in [(split, family) for split in cfg.splits for family in families]:
        picks = [i for i, it in enumerate(items) if it.seed_index == 0 and records[it.prompt_index]["family"] == family
                 and records[it.prompt_index]["eval_split"] == split]
        picks = picks[: cfg.report.grid_columns]
        if not picks:
            continue
        title = suite.grid_title(family) + ("" if split == "in_grammar" else " — phrasing shift")
        grid = ImageGrid(title=title, columns=[(items[i].prompt, items[i].seed) for i in picks],
                         rows={}, flagged={}, notes={})
        for name, model_keys in keys.items():
            if any(model_keys[i] is None and results[name].reads[i] is None for i in picks):
                continue  # a configuration run at fewer seeds
            grid.rows[name] = [session.store.get(model_keys[i]) if model_keys[i] is not None else blank
                               for i in picks]
            reads = [results[name].reads[i] for i in picks]
            grid.notes[name] = [f"refused ({r[REFUSED]})" if r.get(REFUSED) else suite.describe_read(r)
                                for r in reads]
            grid.flagged[name] = [is_flagged(r, cfg.filter.flag_labels) for r in reads]
        grids.append(grid)
    return grids


def suite_prompt_records(cfg: EvalConfig, suite: EvalSuite, pref_dir: Path, config_path: str | None) -> list[dict]:
    """The prompt records of every configured eval split (in_grammar first), after every leakage check
    (before any model is loaded). Each record carries ``eval_split``."""

    # The suite's own checks first (held out by its rules), then the prompts curation will use (curate: section)
    # or did use (the preference set's captions and prompts).
    records = suite.prompt_records(cfg)
    eval_prompts = [r["prompt"] for r in records]
    check_disjoint(eval_prompts, curation_prompts_from_config(config_path), f"{config_path} curate: section")
    check_disjoint(eval_prompts, curation_prompts_from_preference_set(pref_dir), str(pref_dir))
    return records


def split_view(items, results: dict, records, split: str):
    """The items of one eval split and every model's images on them (same order)."""
    keep = [i for i, it in enumerate(items) if records[it.prompt_index]["eval_split"] == split]
    view = {name: ModelImages([imgs.reads[i] for i in keep], [imgs.clip[i] for i in keep])
            for name, imgs in results.items()}
    return [items[i] for i in keep], view


def run_suite(cfg, suite: EvalSuite, session, records, lora_dir, device, esd_dirs: dict[str, Path] | None = None):
    items = make_items([r["prompt"] for r in records], cfg.seeds_per_prompt, cfg.seed, cfg.generation.guidance)
    variants = build_variants(cfg, lora_dir, esd_dirs)
    costs = CostBook.load(session.store.folder.parent / "costs.json")
    generated = generate_all(session, cfg, items, variants, build_scorer_fn(cfg.filter.scorer, cfg, device),
                             costs=costs)
    if not session.state.is_main_process:
        return None
    costs.save()
    keys = generated.keys
    results = suite_results(session, cfg, suite, items, keys, device, generated.refusals)
    mitigations = [name for name in cfg.models if name in MITIGATION_MODELS]
    splits = {}
    for split in cfg.splits:
        split_items, split_results = split_view(items, results, records, split)
        splits[split] = suite.summary(split_items, records, split_results, cfg.bootstrap, cfg.requested, split)
        if mitigations:
            row = refusal_row(split_items, records, split_results, cfg.bootstrap, split)
            if row is not None:
                splits[split]["metrics"].append(row)
        splits[split]["baseline_comparison"] = baseline_comparison(splits[split]["metrics"], split)
        splits[split]["model_bars"] = [model_bar(splits[split]["metrics"], bar, split) for bar in cfg.model_bars]
    first = splits[cfg.splits[0]]
    summary = {"metrics": first["metrics"], "stereotype": first["stereotype"],
               "bars": [bar for section in splits.values() for bar in section["bars"]],
               "baseline_comparison": [c for section in splits.values() for c in section["baseline_comparison"]],
               "splits": splits, "requested": dict(cfg.requested)}
    summary["filter_baseline"] = filter_section(cfg, generated.filter_outcome)
    summary["mitigations"] = mitigations
    summary["model_bars"] = [bar for section in splits.values() for bar in section["model_bars"]]
    trained_from = {**(esd_dirs or {}), **({"aligned": lora_dir, "dpo_stack": lora_dir} if lora_dir else {})}
    summary["costs"] = cost_section(costs, [m for m in cfg.models if m in keys], trained_from)
    summary["refusals"] = {
        name: {split: {"rate": row["by_model"][name]["value"], "by_family": row.get("per_group", {}).get(name, {})}
               for split, section in splits.items()
               for row in section["metrics"] if row["id"] == "refusals" and name in row["by_model"]}
        for name in cfg.models if name in keys}
    summary["dpo_position"] = dpo_position(summary) if "aligned" in keys and mitigations else []
    summary["prompts"] = {"n_prompts": len(records),
                          "by_split_and_family": {split: {f: sum(r["family"] == f and r["eval_split"] == split
                                                                 for r in records)
                                                             for f in dict.fromkeys(r["family"] for r in records)}
                                                  for split in cfg.splits}}
    summary["seeds"] = sorted({it.seed for it in items})
    return summary, suite_grids(session, cfg, suite, items, records, keys, results)


def i2p_splits(cfg: EvalConfig) -> dict[str, tuple[str | None, str | None]]:
    """Eval split -> (I2P CSV, caption file): the configured files, and their paraphrases as the shift split."""
    splits = {"in_grammar": (cfg.i2p.csv, cfg.i2p.captions)}
    if cfg.i2p.paraphrase_csv or cfg.i2p.paraphrase_captions:
        splits["phrasing_shift"] = (cfg.i2p.paraphrase_csv, cfg.i2p.paraphrase_captions)
    return splits


def run_i2p(cfg, session, lora_dir, device):
    """Every I2P split: rows tagged with their split; the first split's rows are the summary's ``metrics``."""
    variants = build_variants(cfg, lora_dir)
    # One lazy scorer each for every split: a model is loaded once, on first use.
    scorers = (build_scorer_fn(cfg.i2p.scorer, cfg, device), build_scorer_fn(cfg.filter.scorer, cfg, device),
               build_clip_fn(cfg, device))
    files = i2p_splits(cfg)
    splits, grids, seeds, filter_info = {}, [], set(), None
    for split, (csv_path, captions_path) in files.items():
        rows, split_grids, split_seeds, outcome = _i2p_split(cfg, session, variants, scorers, csv_path, captions_path)
        seeds |= split_seeds
        filter_info = filter_info or outcome
        if split != "in_grammar":
            for grid in split_grids:
                grid.title += " — phrasing shift"
        grids += split_grids
        for row in rows:
            row["split"] = split
        splits[split] = {"metrics": rows, "stereotype": None, "bars": [],
                         "baseline_comparison": baseline_comparison(rows, split if len(files) > 1 else None)}
    if not session.state.is_main_process:
        return None
    summary = {"metrics": splits["in_grammar"]["metrics"], "stereotype": None, "bars": [],
               "filter_baseline": filter_info, "seeds": sorted(seeds),
               "baseline_comparison": [c for section in splits.values() for c in section["baseline_comparison"]]}
    if len(splits) > 1:
        summary["splits"] = splits
    return summary, grids


def _i2p_split(cfg, session, variants, scorers, csv_path, captions_path):
    """(metric rows, grids, seeds, filter section) of one I2P CSV and/or caption file; ``scorers``: the I2P scorer,
    the filter baseline's scorer and the CLIP score, as (cache id, lazy function) each."""

    scorer, filter_scorer, clip = scorers
    rows, grids, seeds, filter_info = [], [], set(), None
    if csv_path:
        csv_rows = load_i2p_csv(csv_path, cfg.i2p.max_prompts)
        guidance = [r["sd_guidance_scale"] for r in csv_rows] if cfg.i2p.use_csv_guidance else cfg.generation.guidance
        items = make_items([r["prompt"] for r in csv_rows], cfg.i2p.images_per_prompt, cfg.seed, guidance,
                           explicit_seeds=[r["sd_seed"] for r in csv_rows])
        generated = generate_all(session, cfg, items, variants, filter_scorer)
        keys, filter_info = generated.keys, filter_section(cfg, generated.filter_outcome)
        seeds |= {it.seed for it in items}
        if session.state.is_main_process:
            scores = {name: score_made(session, scorer, k, items, desc=f"{cfg.i2p.scorer} {name}")
                      for name, k in keys.items()}
            rows += ip_rows(items, csv_rows, scores, SCORE_KEYS[cfg.i2p.scorer], cfg.i2p.thresholds, cfg.bootstrap)
            picks = list(range(0, len(items), cfg.i2p.images_per_prompt))[: cfg.report.grid_columns]
            threshold = min(cfg.i2p.thresholds)
            grid = ImageGrid("I2P prompts", [(items[i].prompt, items[i].seed) for i in picks], {}, {}, {})
            for name, k in keys.items():
                grid.rows[name] = session.store.get_many([k[i] for i in picks])
                values = [scores[name][i]["scores"].get(SCORE_KEYS[cfg.i2p.scorer], 0.0) for i in picks]
                grid.flagged[name] = [v >= threshold for v in values]
                grid.notes[name] = [f"score {v:.2f}" for v in values]
            grids.append(grid)
        if "aligned" in variants:  # the next set starts again from the base weights
            session.use_base()
    if captions_path:
        captions = load_captions(captions_path)
        items = make_items(captions, cfg.seeds_per_prompt, cfg.seed, cfg.generation.guidance)
        # The filter baseline is about risky prompts: benign captions measure alignment of the other models.
        keys = generate_all(session, cfg, items, variants, filter_scorer, with_filter=False).keys
        seeds |= {it.seed for it in items}
        if session.state.is_main_process:
            clip_scores = {name: [s and s["scores"]["clip_score"]
                                  for s in score_made(session, clip, k, items, desc=f"clip {name}")]
                           for name, k in keys.items()}
            rows += clip_rows(items, captions, clip_scores, cfg.bootstrap)
        if "aligned" in variants:
            session.use_base()
    return rows, grids, seeds, filter_info


def run_eval(cfg: EvalConfig, run_name: str, config_path: str | None = None) -> dict | None:
    """The whole eval; returns ``{"summary": ..., "paths": ...}`` on the main process (None elsewhere)."""
    start = time.perf_counter()
    out_dir, lora_dir = check_inputs(cfg, run_name, config_path)
    esd_dirs = esd_dirs_of(cfg, run_name, config_path)
    pref_dir = Path(cfg.preference_set or f"runs/{run_name}/preference_set")
    device = resolve_device(cfg.device, "eval.device")
    suite = eval_suite_of(cfg)
    records = suite_prompt_records(cfg, suite, pref_dir, config_path) if suite is not None else None
    if suite is None:  # i2p: read the input files now, a bad CSV fails before any model is loaded

        for csv_path, captions_path in i2p_splits(cfg).values():
            if csv_path:
                load_i2p_csv(csv_path, cfg.i2p.max_prompts)
            if captions_path:
                load_captions(captions_path)


    pipe = load_pipeline(cfg.model, dtype=getattr(torch, cfg.generation.dtype), device=device, variant=cfg.variant)
    resolution = cfg.generation.resolution or native_resolution(pipe)
    batch_size = resolve_batch_size(cfg.generation.batch_size, resolution, pipe.device.type)
    fast = use_fast_paths(cfg.generation.fast_paths, pipe.device.type)
    if fast:
        prepare_pipeline(pipe, cfg.generation.speedups)
    session = EvalSession(out_dir, pipe, cfg.model, cfg.generation.steps, cfg.generation.sampler, resolution,
                          batch_size, speedups=cfg.generation.speedups if fast else None, variant=cfg.variant)
    if session.state.is_main_process:
        write_resolved_config(cfg, out_dir)
    if suite is not None:
        result = run_suite(cfg, suite, session, records, lora_dir, device, esd_dirs)
    else:
        result = run_i2p(cfg, session, lora_dir, device)
    if result is None:
        return None
    summary, grids = result
    models = [m for m in cfg.models]
    summary.update({
        "run_name": run_name,
        "models": models,
        "model_path": str(cfg.model),
        "lora_dir": str(lora_dir) if lora_dir else None,
        "esd_dirs": {name: str(folder) for name, folder in esd_dirs.items()},
        "negative_prompt": ", ".join(cfg.negative_prompts) if "negative_prompt" in models else None,
        "baseline_seeds_per_prompt": cfg.baseline_seeds_per_prompt,  # None: every seed
        "generation": {"steps": cfg.generation.steps, "guidance": cfg.generation.guidance,
                       "sampler": cfg.generation.sampler, "resolution": resolution,
                       "seeds_per_prompt": cfg.seeds_per_prompt, "base_seed": cfg.seed,
                       "images_generated_this_run": session.generated, "images_reused": session.reused,
                       "fast_paths": cfg.generation.speedups.enabled() if fast else [],
                       "images_scored_this_run": session.scored},
        "wall_seconds": round(time.perf_counter() - start, 1),
        "device": device,
        "config": to_dict(cfg),
    })
    if "baseline_comparison" not in summary:
        summary["baseline_comparison"] = baseline_comparison(summary["metrics"])
    notes = list(suite.notes(cfg)) if suite is not None else []
    stereotype = summary.get("stereotype") or {}
    if stereotype.get("uniform_model_reads") is not None:
        notes.append(f"Stereotype max share: at {sample_size_label(stereotype['images_per_role'])} images per role "
                     f"a perfectly uniform model would read {stereotype['uniform_model_reads']:.3f} "
                     f"(the plug-in estimator's upward bias; uniform is {1 / len(stereotype['groups']):.3f}).")
    baselines = [name for name in models if name not in ("base", "aligned")]
    if baselines and cfg.baseline_seeds_per_prompt is not None:
        notes.append(f"The baselines ({', '.join(baselines)}) ran at each prompt's first {cfg.baseline_seeds_per_prompt} "
                     "seed(s) only (eval.baseline_seeds_per_prompt; base and aligned at every seed): their rates are over "
                     "fewer images, and each difference with a baseline is paired on the images both models have.")
    if summary.get("mitigations"):
        notes.append("A refused request (blocked by the prompt filter, or its image blurred or withheld by the stack) "
                     "counts as no risk and as an alignment failure: nothing requested is shown, the image is not "
                     "valid and its CLIP score is 0; the refusals row says how often (evals/mitigation_models.py).")
    summary["notes"] = notes
    summary["meta"] = {"model": cfg.model, "LoRA": summary["lora_dir"] or "none",
                       "prompts": summary.get("prompts", {}).get("n_prompts", "–"),
                       "seeds per prompt": cfg.seeds_per_prompt, "steps": cfg.generation.steps,
                       "guidance": cfg.generation.guidance, "sampler": cfg.generation.sampler, "device": device,
                       "wall time (s)": summary["wall_seconds"]}
    atomic_write_json(out_dir / "summary.json", summary)
    paths = write_report(out_dir, summary, grids, blur_px=cfg.report.blur_px)
    paths["summary"] = out_dir / "summary.json"
    return {"summary": summary, "paths": paths}


def print_result(result: dict) -> None:
    print()
    print(console_table(result["summary"]))
    for c in result["summary"]["baseline_comparison"]:
        d = c["difference"]
        where = f" ({c['split']})" if c.get("split") else ""
        print(f"  DPO {c['verdict']} {c['baseline']} on {c['title']}{where}: aligned - baseline "
              f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
    for bar in result["summary"].get("model_bars") or []:
        est = bar.get("estimate")
        value = "–" if not est else f"{est['value']:.3f} [{est['low']:.3f}, {est['high']:.3f}]"
        print(f"  {bar['model']} {'met' if bar['met'] else 'MISSED'} {bar['title']} {bar['target']} "
              f"({bar['split']}): {value}")
    for note in result["summary"]["notes"]:
        print("  " + note)
    print(f"\nreport: {result['paths']['report']}")
    print(f"summary: {result['paths']['summary']}")


def main(argv=None) -> int:
    args = CLI.parse_args(argv, build_parser())

    def work() -> None:
        cfg = load_stage_config(EvalConfig, args.config, "eval", args.overrides)
        result = run_eval(cfg, config_name(args.config), args.config)
        if result is not None:
            print_result(result)

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
