"""Resumable generate-and-score work for curation: every image and every score is keyed by content.

``Workspace.realise(specs, captions)`` makes sure each spec's image is in the :class:`ImageStore`
and each configured scorer's output for (image, caption) is in the score cache, then returns
:class:`Candidate` s. Both steps are split across accelerate processes and skip finished work, so a
killed run that restarts redoes only what was missing, and every process ends up reading the same
cached values (and so takes the same decisions).

Cache layout under ``work_dir``::

    images/<k[:2]>/<image key>.png
    scores/<scorer name>-<config key>/<k[:2]>/<image key>-<caption key>.json
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from core.io import atomic_write_json, stable_key
from inference.generation import GenerationReport, GenerationSpec, ImageStore, process_state


@dataclass
class Candidate:
    """One generated image with every scorer's output on it (scored against ``caption``)."""

    spec: GenerationSpec
    key: str
    caption: str
    scores: dict[str, dict[str, Any]]


@dataclass
class Workspace:
    pipe: Any
    model_id: str
    store: ImageStore
    score_dir: Path
    scorers: dict[str, Any]  # name -> Scorer
    scorer_configs: dict[str, dict]  # name -> its config (part of the cache key)
    batch_size: int = 32
    score_batch_size: int = 64
    progress: bool = True
    reports: list[GenerationReport] = field(default_factory=list)
    scoring_seconds: float = 0.0
    seen_scores: dict[tuple[str, str], dict] = field(default_factory=dict)  # (image key, caption) -> scores

    def realise(self, specs: list[GenerationSpec], captions: list[str], desc: str = "generate") -> list[Candidate]:
        report = self.store.generate_missing(
            self.pipe, specs, model_id=self.model_id, batch_size=self.batch_size, progress=self.progress, desc=desc
        )
        self.reports.append(report)
        keys = [s.key(self.model_id) for s in specs]
        scores = self.score(keys, captions)
        return [Candidate(spec, key, caption, sc) for spec, key, caption, sc in zip(specs, keys, captions, scores)]

    # ---- scoring with a content-keyed cache -----------------------------------------------------
    def _score_path(self, scorer: str, image_key: str, caption: str) -> Path:
        folder = f"{scorer}-{stable_key(scorer, self.scorer_configs.get(scorer, {}))[:10]}"
        return self.score_dir / folder / image_key[:2] / f"{image_key}-{stable_key(caption)[:12]}.json"

    def score(self, keys: list[str], captions: list[str]) -> list[dict[str, dict[str, Any]]]:
        state = process_state()
        start = time.perf_counter()
        items = list(dict.fromkeys(zip(keys, captions)))  # unique, in first-seen order
        for name, scorer in self.scorers.items():
            # Fixed chunks (independent of what is cached or how many processes run), so every score
            # is computed in the same batch as in an uninterrupted run.
            chunks = [items[i : i + self.score_batch_size] for i in range(0, len(items), self.score_batch_size)]
            state.wait_for_everyone()  # all processes decide what is left from the same cache state
            todo = [c for c in chunks if not all(self._score_path(name, k, c_).is_file() for k, c_ in c)]
            with state.split_between_processes(todo) as mine:
                for chunk in tqdm(mine, desc=f"score {name}", unit="batch", disable=not (self.progress and mine)):
                    images = [self.store.get(k) for k, _ in chunk]
                    outputs = scorer.score(images, prompts=[c for _, c in chunk])
                    for (key, caption), out in zip(chunk, outputs):
                        path = self._score_path(name, key, caption)
                        if not path.is_file():
                            atomic_write_json(path, _jsonable(out))
            state.wait_for_everyone()
        self.scoring_seconds += time.perf_counter() - start
        results = []
        for key, caption in zip(keys, captions):
            if (key, caption) not in self.seen_scores:
                self.seen_scores[(key, caption)] = {
                    name: json.loads(self._score_path(name, key, caption).read_text()) for name in self.scorers
                }
            results.append(self.seen_scores[(key, caption)])
        return results

    def image(self, key: str) -> np.ndarray:
        return self.store.get(key)

    # ---- throughput -----------------------------------------------------------------------------
    def generation_summary(self) -> dict[str, float]:
        generated = sum(r.generated for r in self.reports)
        seconds = sum(r.seconds for r in self.reports)
        reused = sum(r.already_present for r in self.reports)
        return {
            "images_generated": generated,
            "images_reused": reused,
            "generation_seconds": round(seconds, 2),
            "images_per_second": round(generated / seconds, 3) if seconds > 0 and generated else None,
            "scoring_seconds": round(self.scoring_seconds, 2),
        }


def describe_generation(summary: dict[str, Any]) -> str:
    """One line on what a :meth:`Workspace.generation_summary` (or a merge of them) did, for the log: the
    rate only when something was generated (with nothing generated there is no rate to give)."""
    generated, reused = summary["images_generated"], summary.get("images_reused", 0)
    if not generated:
        return f"generated no images (all {reused} found in the store)" if reused else "generated no images"
    rate = summary.get("images_per_second")
    line = f"generated {generated} images" + (f" at {rate} images/s" if rate is not None else "")
    return line + (f" ({reused} found in the store)" if reused else "")


def _jsonable(obj: Any) -> Any:
    """Scorer outputs as plain JSON types (numpy scalars and bools converted)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj
