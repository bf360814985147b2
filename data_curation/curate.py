"""``make curate``: risk-specific preference pairs from a base model, written as a preference set.

    python -m data_curation.curate --config configs/demo.yaml [key=value ...]
    accelerate launch --num_processes N -m data_curation.curate --config ...   (make curate GPUS=N)

config -> prompts (deduped, leakage-checked) -> generate (resumable) -> score -> pairs -> set at
``runs/<config name>/preference_set/`` with its card, ``stats.json`` and the resolved config.
Killed and restarted, it reuses every finished image and score and writes exactly the same pairs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from core.config import config_name, load_stage_config, to_dict, write_resolved_config
from core.errors import DataError, PipelineError
from core.io import atomic_write_json, stable_key
from data_curation.config import CurateConfig
from data_curation.generation import (
    GenerationSpec,
    ImageStore,
    model_fingerprint,
    native_resolution,
    process_state,
    resolve_batch_size,
)
from data_curation.prompts import load_prompts
from data_curation.quality import precision_recall, verify_pairs
from data_curation.retain import curate_retain, retain_rows
from data_curation.risks import make_judge
from data_curation.scorers import build_scorer
from data_curation.strategies import Pair, curate_risk
from data_curation.workspace import Workspace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_curation.curate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML config with a curate: section")
    parser.add_argument("overrides", nargs="*", help="curate-section overrides, e.g. risks.exposure.target_pairs=50")
    return parser.parse_args(argv)


def output_folders(cfg: CurateConfig, config_path: str) -> tuple[Path, Path]:
    run = Path("runs") / config_name(config_path)
    return Path(cfg.output_dir or run / "preference_set"), Path(cfg.work_dir or run / "curate_work")


def retain_folder(cfg: CurateConfig, config_path: str) -> Path:
    """``retain.output_dir``, else ``retain_set`` beside the preference set (runs/<config>/retain_set by
    default): a run that moves its preference set elsewhere never overwrites the default run's retain set."""
    if cfg.retain.output_dir:
        return Path(cfg.retain.output_dir)
    return output_folders(cfg, config_path)[0].parent / "retain_set"


def balance_values(risk, kind: str) -> list[str]:
    """Stereotype balance values: the config's list, else the synthetic world's groups."""
    if kind != "stereotype" or risk.balance.values:
        return list(risk.balance.values)
    from synthetic_world.vocab import GROUPS

    return list(GROUPS)


def pair_row(pair: Pair, ws: Workspace, model_id: str) -> dict[str, Any]:
    """One preference-set row; the preferred image's column is fixed by the pair's content key."""
    from preference_sets.schema import make_pair_row

    pair_id = stable_key("pair-v1", pair.risk, pair.strategy, pair.caption, pair.preferred.key, pair.rejected.key)
    # Put the preferred image in column 0 or 1 by a hash bit, so neither column means "preferred".
    first, second = (pair.preferred, pair.rejected) if int(pair_id[-1], 16) % 2 == 0 else (pair.rejected, pair.preferred)
    return make_pair_row(
        caption=pair.caption,
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
    for name, risk in cfg.risks.items():
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


def run(cfg: CurateConfig, config_path: str) -> Path | None:
    """The whole stage; returns the set's folder on the main process (None on the others)."""
    import torch

    from core.models import load_pipeline, lora_weights_file
    from preference_sets.io import write_preference_set
    from preference_sets.retain import write_retain_set

    state = process_state()
    out_dir, work_dir = output_folders(cfg, config_path)
    # Prompts first: bad prompt files and leakage fail before any model is loaded.
    prompts = {name: load_prompts(risk.prompts, f"curate.risks.{name}.prompts") for name, risk in cfg.risks.items()}
    retain_prompts = load_prompts(cfg.retain.prompts, "curate.retain.prompts") if cfg.retain.prompts else None
    lora_file = lora_weights_file(cfg.lora, "curate.lora: give a folder written by `make train`") if cfg.lora else None
    dtype = getattr(torch, cfg.generation.dtype)
    pipe = load_pipeline(cfg.model, dtype=dtype, device=str(state.device))
    model_id = cfg.model_name or str(cfg.model)
    key_id = f"{model_id}@{model_fingerprint(cfg.model)}"
    if lora_file is not None:
        pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name)
        model_id = f"{model_id}+{cfg.lora}"
        key_id = f"{key_id}+lora@{model_fingerprint(lora_file)}"
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

    all_pairs: list[Pair] = []
    per_risk: dict[str, dict] = {}
    judges = [make_judge(name, risk) for name, risk in cfg.risks.items()]
    for judge in judges:
        name, risk = judge.name, judge.cfg
        if risk.target_pairs == 0:  # check only: its detector serves the other risks' cross-risk check
            per_risk[name] = {"target_pairs": 0, "pairs_kept": 0, "check_only": True}
            continue
        others = [j for j in judges if j is not judge] if cfg.cross_risk_check else []
        pairs, info = curate_risk(ws, judge, prompts[name], base, cfg.seed,
                                  default_groups=balance_values(risk, judge.kind), others=others)
        info["pair_similarity"] = similarity_summary(pairs)
        if cfg.reference_scorer in scorers:
            info[f"verified_by_{cfg.reference_scorer}"] = verify_pairs(judge, pairs, cfg.reference_scorer)
        per_risk[name] = info
        all_pairs += pairs
        if state.is_main_process:
            print(f"[curate] {name}: {info['pairs_kept']}/{info['target_pairs']} pairs "
                  f"({info['originals_with_risk']}/{info['original_images']} originals carried the risk)")

    retained, retain_info = None, None
    if retain_prompts is not None:
        retained, retain_info = curate_retain(ws, cfg.retain, retain_prompts, judges, base, cfg.seed)
        if state.is_main_process:
            print(f"[curate] retain set: {retain_info['images_kept']}/{retain_info['images_generated']} base images kept "
                  f"(dropped: {retain_info['dropped'] or 'none'})")
        if not retained:
            raise DataError("curate.retain: every retain image was dropped (all flagged or invalid); "
                            "choose prompts unrelated to the risks or set retain.drop_risky=false")

    summary = ws.generation_summary()
    print(f"[curate] rank {state.process_index}/{state.num_processes}: generated {summary['images_generated']} images "
          f"at {summary['images_per_second']} images/s ({summary['images_reused']} found in the store)", flush=True)
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
                  **({"retain_set": retain_info} if retain_info else {})},
    }
    rows = (pair_row(p, ws, model_id) for p in all_pairs)
    write_preference_set(rows, out_dir, card=card, shard_size=cfg.shard_size, overwrite=cfg.overwrite)
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
    args = parse_args(argv)
    try:
        cfg = load_stage_config(CurateConfig, args.config, "curate", args.overrides)
        run(cfg, args.config)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
