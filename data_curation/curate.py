"""``make curate``: risk-specific preference pairs from a base model, written as a preference set.

    python -m data_curation.curate --config configs/demo.yaml [--key value | key=value ...]
    accelerate launch --num_processes N -m data_curation.curate --config ...   (make curate GPUS=N)

config -> prompts (deduped, leakage-checked) -> generate (resumable) -> score -> pairs -> set at
``runs/<config name>/preference_set/`` with its card, ``stats.json`` and the resolved config.
Killed and restarted, it reuses every finished image and score and writes exactly the same pairs.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from core.cli import StageCLI, run_main
from core.config import config_name, load_stage_config, to_dict, write_resolved_config
from core.errors import ConfigError, DataError
from core.io import atomic_write_json, stable_key
from core.models import load_pipeline, lora_weights_file, model_fingerprint
from core.output_dir import check_output_dir
from data_curation.config import CurateConfig
from data_curation.quality import precision_recall, verify_pairs
from data_curation.retain import curate_retain, retain_rows
from data_curation.risks import cross_risk_judges, make_judges
from data_curation.strategies import Pair, curate_risk, mirror_pair
from data_curation.workspace import Workspace, describe_generation
from inference.generation import (
    GenerationSpec,
    ImageStore,
    native_resolution,
    process_state,
    resolve_batch_size,
    solo_process,
)
from inference.prompts import load_prompts, prompt_source
from inference.scorers import build_scorer
from inference.speedups import merge_lora, prepare_pipeline, use_fast_paths
from preference_sets.io import write_preference_set
from preference_sets.retain import write_retain_set
from preference_sets.schema import make_pair_row


CLI = StageCLI(CurateConfig, "curate", prog="python -m data_curation.curate", description=__doc__,
               config_required=True)


def build_parser():
    return CLI.parser()


def output_folders(cfg: CurateConfig, config_path: str) -> tuple[Path, Path]:
    run = Path("runs") / config_name(config_path)
    return Path(cfg.output_dir or run / "preference_set"), Path(cfg.work_dir or run / "curate_work")


def retain_folder(cfg: CurateConfig, config_path: str) -> Path:
    """``retain.output_dir``, else ``retain_set`` beside the preference set (runs/<config>/retain_set by
    default): a run that moves its preference set elsewhere never overwrites the default run's retain set."""
    if cfg.retain.output_dir:
        return Path(cfg.retain.output_dir)
    return output_folders(cfg, config_path)[0].parent / "retain_set"


def balance_values(risk, kind: str, name: str) -> list[str]:
    """Stereotype balance values: the config's list, else every value the risk's prompt source gives the balanced
    attribute."""
    if kind != "stereotype" or risk.balance.values:
        return list(risk.balance.values)
    attribute = risk.balance.attribute or risk.detector.attribute
    values = prompt_source(risk.prompts.source).slot_values(attribute)
    if not values:
        raise ConfigError(f"curate.risks.{name}.balance.values: the prompt source {risk.prompts.source!r} does not "
                          f"know the values of {attribute!r}; list them")
    return list(values)


def pair_rows(pair: Pair, ws: Workspace, model_id: str, caption_variants: int):
    """The pair's row under its own caption, then under up to ``caption_variants`` paraphrases (same images)."""
    yield pair_row(pair, ws, model_id)
    if pair.record is not None:
        for caption in pair.record.paraphrases(caption_variants):
            yield pair_row(pair, ws, model_id, caption)


def pair_row(pair: Pair, ws: Workspace, model_id: str, caption: str | None = None) -> dict[str, Any]:
    """One preference-set row; the preferred image's column is fixed by the pair's content key. ``caption``
    replaces the training caption (a paraphrase of the pair's prompt); the generation prompts stay."""
    caption = caption or pair.caption
    pair_id = stable_key("pair-v1", pair.risk, pair.strategy, caption, pair.preferred.key, pair.rejected.key)
    # Put the preferred image in column 0 or 1 by a hash bit, so neither column means "preferred".
    first, second = (pair.preferred, pair.rejected) if int(pair_id[-1], 16) % 2 == 0 else (pair.rejected, pair.preferred)
    return make_pair_row(
        caption=caption,
        jpg_0=ws.store.get_bytes(first.key),
        jpg_1=ws.store.get_bytes(second.key),
        label_0=1.0 if first is pair.preferred else 0.0,
        risk=pair.risk,
        strategy=pair.strategy,
        pair_id=pair_id,
        seed_0=first.spec.seed,
        seed_1=second.spec.seed,
        prompt_0=first.spec.prompt,
        prompt_1=second.spec.prompt,
        negative_prompt_0=first.spec.negative_prompt,
        negative_prompt_1=second.spec.negative_prompt,
        model_id=model_id,
        generation=first.spec.to_json(),
        scores_0={**first.scores, "curation": pair.note},
        scores_1={**second.scores, "curation": pair.note},
        pair_similarity=pair.similarity,
    )


def scorer_thresholds(cfg: CurateConfig) -> dict[str, dict]:
    table: dict[str, dict] = {name: dict(opts) for name, opts in cfg.scorers.items()}
    for name, risk in cfg.tasks().items():
        det = risk.detector
        table.setdefault("risks", {})[name] = {
            "scorer": det.scorer,
            **({"key": det.key, "threshold": det.threshold, "safe_below": det.safe_threshold} if det.key else {}),
            **({"attribute": det.attribute} if det.attribute else {}),
        }
    return table


def similarity_summary(pairs: list[Pair]) -> dict[str, float | None]:
    values = sorted(p.similarity for p in pairs if not math.isnan(p.similarity))
    if not values:
        return {"mean": None, "median": None, "min": None}
    return {"mean": sum(values) / len(values), "median": values[len(values) // 2], "min": values[0]}


RETAIN_TASK = "retain"


def curate_tasks(
    ws: Workspace, cfg: CurateConfig, prompts: dict[str, list], retain_prompts: list | None, base: GenerationSpec,
    only: set[str] | None = None, announce: bool = True, retain_requested: frozenset[str] = frozenset(),
) -> tuple[list[Pair], dict[str, dict], list | None, dict | None]:
    """Curate every risk in config order, then the retain set: (pairs, per-risk info, retained images, retain info).

    ``only``: run just these tasks (risk names, or ``RETAIN_TASK``); the others are skipped and left out of the
    result. The judges are built fresh on each call (the stereotype judge keeps the group schedules it fits).
    """
    all_pairs: list[Pair] = []
    per_risk: dict[str, dict] = {}
    judges = make_judges(cfg)
    groups = {judge.name: balance_values(judge.cfg, judge.kind, judge.name) for judge in judges}  # before any work
    for judge in judges:
        name, risk = judge.name, judge.cfg
        if only is not None and name not in only:
            continue
        if risk.target_pairs == 0:  # check only: its detector serves the other risks' cross-risk check
            per_risk[name] = {"target_pairs": 0, "pairs_kept": 0, "check_only": True}
            continue
        others = cross_risk_judges(judge, judges) if cfg.cross_risk_check else []
        pairs, info = curate_risk(ws, judge, prompts[name], base, cfg.seed,
                                  default_groups=groups[name], others=others)
        info["pair_similarity"] = similarity_summary(pairs)
        if cfg.reference_scorer in ws.scorers:
            info[f"verified_by_{cfg.reference_scorer}"] = verify_pairs(judge, pairs, cfg.reference_scorer)
        if risk.mirror:
            mirrors = [m for m in (mirror_pair(p, risk.mirror, risk.detector.scorer) for p in pairs) if m is not None]
            info["mirror_pairs"] = len(mirrors)
            pairs = pairs + mirrors
        per_risk[name] = info
        all_pairs += pairs
        if announce:
            print(f"[curate] {name}: {info['pairs_kept']}/{info['target_pairs']} pairs "
                  f"({info['originals_with_risk']}/{info['original_images']} originals carried the risk)")

    retained, retain_info = None, None
    if retain_prompts is not None and (only is None or RETAIN_TASK in only):
        retained, retain_info = curate_retain(ws, cfg.retain, retain_prompts, judges, base, cfg.seed,
                                              retain_requested)
        if announce:
            print(f"[curate] retain set: {retain_info['images_kept']}/{retain_info['images_generated']} base images kept "
                  f"(dropped: {retain_info['dropped'] or 'none'})")
        if not retained:
            raise DataError("curate.retain: every retain image was dropped (all flagged or invalid); "
                            "choose prompts unrelated to the risks or set retain.drop_risky=false")
    return all_pairs, per_risk, retained, retain_info


def resolve_process_split(setting: str, state) -> str:
    """``auto``: whole tasks per process on a CPU launch of several processes (its generate and score calls
    are too small to split well: 2 processes were slower than one), batches otherwise."""
    if state.num_processes == 1:
        return "batches"
    if setting == "auto":
        return "tasks" if state.device.type == "cpu" else "batches"
    return setting


def task_costs(cfg: CurateConfig, prompts: dict[str, list], retain_prompts: list | None) -> dict[str, int]:
    """Rough image count per task (originals, and as many correctives), largest first: the order tasks are
    handed out in, so the long ones start early and the short ones fill the gaps."""
    costs = {name: 2 * len(prompts[name]) * risk.images_per_prompt
             for name, risk in cfg.tasks().items() if risk.target_pairs > 0}
    if retain_prompts is not None:
        costs[RETAIN_TASK] = len(retain_prompts) * cfg.retain.images_per_prompt
    return dict(sorted(costs.items(), key=lambda kv: -kv[1]))


def claim(folder: Path, task: str) -> bool:
    """True for exactly one process per task: the one whose exclusive create of ``folder/task`` succeeds."""
    try:
        os.close(os.open(folder / task, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def wait_for_all(state) -> None:
    """A barrier without the process group's default timeout (30 min): a process's tasks can take hours."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=datetime.timedelta(days=7))
    else:
        state.wait_for_everyone()


def run_tasks_split(ws: Workspace, cfg: CurateConfig, prompts, retain_prompts, base, state, work_dir: Path,
                    retain_requested: frozenset[str] = frozenset()) -> dict:
    """``process_split: tasks``: each process takes whole tasks (a risk, or the retain set) from a shared list,
    largest first, and curates them alone (``solo_process``), filling the shared image and score caches; no
    collective call until all are done. Returns the generation summary of all processes (on every process).
    """
    claims = work_dir / "task_claims"
    reports = work_dir / "task_reports"
    if state.is_main_process:
        shutil.rmtree(claims, ignore_errors=True)
        claims.mkdir(parents=True)
        reports.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    mine = []
    ws.progress = True
    with solo_process():
        for task in task_costs(cfg, prompts, retain_prompts):
            if claim(claims, task):
                mine.append(task)
                print(f"[curate] rank {state.process_index}: task {task}", flush=True)
                curate_tasks(ws, cfg, prompts, retain_prompts, base, only={task}, announce=False,
                             retain_requested=retain_requested)
    own = ws.generation_summary() | {"tasks": mine}
    atomic_write_json(reports / f"rank{state.process_index}.json", own)
    print(f"[curate] rank {state.process_index}/{state.num_processes}: tasks {mine}: "
          f"{describe_generation(own)}", flush=True)
    wait_for_all(state)
    per_process = [json.loads((reports / f"rank{r}.json").read_text()) for r in range(state.num_processes)]
    return merge_generation_summaries(per_process)


def merge_generation_summaries(per_process: list[dict]) -> dict:
    """One summary of processes that ran side by side: images summed, seconds the longest process's."""
    generated = sum(p["images_generated"] for p in per_process)
    seconds = max(p["generation_seconds"] for p in per_process)
    return {
        "images_generated": generated,
        "images_reused": sum(p["images_reused"] for p in per_process),
        "generation_seconds": seconds,
        "images_per_second": round(generated / seconds, 3) if seconds > 0 and generated else None,
        "scoring_seconds": max(p["scoring_seconds"] for p in per_process),
        "process_split": "tasks",
        "per_process": per_process,
    }


def run(cfg: CurateConfig, config_path: str) -> Path | None:
    """The whole stage; returns the set's folder on the main process (None on the others)."""
    state = process_state()
    out_dir, work_dir = output_folders(cfg, config_path)
    check_output_dir(out_dir, cfg.overwrite, "curate.output_dir", keep=[("curate.work_dir", work_dir)])
    if cfg.retain.prompts:
        check_output_dir(retain_folder(cfg, config_path), cfg.overwrite, "curate.retain.output_dir",
                         keep=[("curate.work_dir", work_dir), ("curate.output_dir", out_dir)])
    # Prompts first: bad prompt files and leakage fail before any model is loaded.
    prompts = {name: load_prompts(risk.prompts, f"curate.risks.{name}.prompts") for name, risk in cfg.tasks().items()}
    retain_prompts, retain_requested = None, frozenset()
    if cfg.retain.prompts:
        retain_prompts = load_prompts(cfg.retain.prompts, "curate.retain.prompts")
        for i, source in enumerate(cfg.retain.extra_prompts):
            retain_prompts += load_prompts(source, f"curate.retain.extra_prompts[{i}]")
        requests = [r for i, source in enumerate(cfg.retain.request_prompts)
                    for r in load_prompts(source, f"curate.retain.request_prompts[{i}]")]
        retain_prompts += requests
        retain_requested = frozenset(r.prompt for r in requests)
    lora_file = lora_weights_file(cfg.lora, "curate.lora: give a folder written by `make train`") if cfg.lora else None
    dtype = getattr(torch, cfg.generation.dtype)
    pipe = load_pipeline(cfg.model, dtype=dtype, device=str(state.device), variant=cfg.variant)
    model_id = cfg.model_name or str(cfg.model)
    key_id = f"{model_id}@{model_fingerprint(cfg.model, cfg.variant)}"
    if lora_file is not None:
        pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name)
        model_id = f"{model_id}+{cfg.lora}"
        key_id = f"{key_id}+lora@{model_fingerprint(lora_file)}"
    fast_paths = use_fast_paths(cfg.generation.fast_paths, state.device.type)
    if fast_paths:
        if lora_file is not None:
            merge_lora(pipe)
        prepare_pipeline(pipe, cfg.generation.speedups)
    scorers = {name: build_scorer(name, **opts) for name, opts in cfg.scorers.items()}
    size = cfg.generation.resolution or native_resolution(pipe)
    ws = Workspace(
        pipe=pipe,
        model_id=key_id,
        store=ImageStore(work_dir / "images"),
        score_dir=work_dir / "scores",
        scorers=scorers,
        scorer_configs=cfg.scorers,
        batch_size=resolve_batch_size(cfg.generation.batch_size, size, state.device.type),
        progress=state.is_main_process,
    )
    base = GenerationSpec(
        prompt="", steps=cfg.generation.steps, guidance=cfg.generation.guidance,
        height=size, width=size, sampler=cfg.generation.sampler,
    )

    split = resolve_process_split(cfg.process_split, state)
    if split == "tasks":
        summary = run_tasks_split(ws, cfg, prompts, retain_prompts, base, state, work_dir, retain_requested)
        if not state.is_main_process:
            return None
        # Every image and score of the run is now cached: this process replays the whole curation alone,
        # reading them back, so the pairs are those of a one-process run (it generates nothing more).
        ws.progress, ws.reports, ws.scoring_seconds = False, [], 0.0
        with solo_process():
            all_pairs, per_risk, retained, retain_info = curate_tasks(ws, cfg, prompts, retain_prompts, base,
                                                                      retain_requested=retain_requested)
        summary["images_generated_in_replay"] = ws.generation_summary()["images_generated"]
    else:
        all_pairs, per_risk, retained, retain_info = curate_tasks(
            ws, cfg, prompts, retain_prompts, base, announce=state.is_main_process, retain_requested=retain_requested
        )
        summary = ws.generation_summary()
        print(f"[curate] rank {state.process_index}/{state.num_processes}: {describe_generation(summary)}", flush=True)
        if not state.is_main_process:
            return None

    measured = {}
    if cfg.precision_recall_scorer:
        measured[cfg.precision_recall_scorer] = precision_recall(
            ws.seen_scores.values(), cfg.precision_recall_scorer, cfg.reference_scorer
        )
    card = {
        "title": f"Safety preference set: {config_name(config_path)}",
        "description": (
            f"Automatically curated from `{model_id}` by `python -m data_curation.curate --config {config_path}`. "
            "Training captions are the original benign prompts; `prompt_0`/`prompt_1` are what generated each image."
        ),
        "curation_config": to_dict(cfg),
        "scorer_thresholds": scorer_thresholds(cfg),
        "scorer_precision_recall": {
            f"{name} vs {cfg.reference_scorer}": figures for name, figures in measured.items()
        },
        "extra": {"per_risk": per_risk, "generation": summary, "processes": state.num_processes,
                  "fast_paths": cfg.generation.speedups.enabled() if fast_paths else [],
                  **({"retain_set": retain_info} if retain_info else {})},
    }
    rows = (row for p in all_pairs for row in pair_rows(p, ws, model_id, cfg.caption_variants))
    # check_output_dir allowed replacing out_dir before any work began.
    write_preference_set(rows, out_dir, card=card, shard_size=cfg.shard_size, overwrite=True)
    write_resolved_config(cfg, out_dir)
    atomic_write_json(out_dir / "curation_report.json", card["extra"] | {"scorer_precision_recall": card["scorer_precision_recall"]})
    print(f"[curate] wrote {len(all_pairs)} pairs to {out_dir}")
    if retained:
        folder = retain_folder(cfg, config_path)
        meta = {"config": to_dict(cfg.retain), "model_id": model_id, **retain_info}
        write_retain_set(retain_rows(retained, ws, model_id), folder, meta, shard_size=cfg.shard_size)
        write_resolved_config(cfg, folder)
        print(f"[curate] wrote {len(retained)} retain images to {folder}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = CLI.parse_args(argv, build_parser())

    def work() -> None:
        run(load_stage_config(CurateConfig, args.config, "curate", args.overrides), args.config)

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
