"""Eval mechanics shared by the synthetic and real-model paths: paired image specs for every model,
resumable generation, a score cache keyed by image key, and the filter + regenerate baseline.

Paired design: every model sees the same list of ``EvalItem`` (prompt, seed). Model variants differ
only in weights (base vs base + LoRA) or in the negative prompt; the filter baseline starts from the
base model's image of each item and regenerates flagged ones with new seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from core.errors import DataError, ModelPathError
from core.io import atomic_write_text
from core.models import LORA_WEIGHT_NAME
from core.models import load_pipeline
from inference.generation import GenerationSpec, ImageStore, derive_seed, model_fingerprint, process_state
from inference.speedups import merge_lora, prepare_pipeline



@dataclass(frozen=True)
class EvalItem:
    """One (prompt, seed) cell of the paired design; ``prompt_index`` is the bootstrap cluster."""

    prompt_index: int
    seed_index: int
    prompt: str
    seed: int
    guidance: float


@dataclass
class ModelVariant:
    """A model under comparison: weights (adapter or not) and the negative prompt it uses."""

    name: str
    adapter_dir: Path | None = None
    negative_prompt: str = ""
    adapter_id: str | None = None  # content fingerprint of the LoRA file (part of image keys)


@dataclass
class ImageRecord:
    """The image one model produced for one item, and the key it is stored and scored under."""

    item: EvalItem
    key: str
    attempts: int = 1  # > 1 only for the filter baseline (regenerations)
    flagged_first: bool = False


def make_items(prompts: Sequence[str], seeds_per_prompt: int, base_seed: int, guidance: float | Sequence[float],
               explicit_seeds: Sequence[int] | None = None) -> list[EvalItem]:
    """Items for every prompt x seed. Seeds derive from (base seed, prompt, j), so they are the same
    for every model and do not depend on prompt order; ``explicit_seeds`` (I2P's sd_seed) override."""
    guidances = [guidance] * len(prompts) if isinstance(guidance, (int, float)) else list(guidance)
    items = []
    for p, prompt in enumerate(prompts):
        for j in range(seeds_per_prompt):
            if explicit_seeds is not None:
                seed = int(explicit_seeds[p]) + j  # I2P convention: sd_seed, sd_seed + 1, ...
            else:
                seed = derive_seed(base_seed, prompt, j)
            items.append(EvalItem(p, j, prompt, seed, float(guidances[p])))
    return items


def check_lora_dir(path: str | Path) -> Path:
    """The LoRA folder the trainer writes; missing folder or file -> ModelPathError."""
    path = Path(path)
    if not (path / LORA_WEIGHT_NAME).is_file():
        raise ModelPathError(
            f"LoRA not found: {path / LORA_WEIGHT_NAME} does not exist (run `make train`, set eval.lora, "
            "or drop 'aligned' from eval.models)"
        )
    return path


def spec_for(item: EvalItem, variant: ModelVariant, steps: int, sampler: str, resolution: int,
             seed: int | None = None) -> GenerationSpec:
    return GenerationSpec(
        prompt=item.prompt,
        negative_prompt=variant.negative_prompt,
        seed=item.seed if seed is None else seed,
        steps=steps,
        guidance=item.guidance,
        height=resolution,
        width=resolution,
        sampler=sampler,
    )


class ScoreCache:
    """Scorer outputs keyed by ``<scorer id>/<image key>`` in one JSON file (rewritten atomically).

    An interrupted eval keeps every score computed before the interruption; a resumed eval scores
    only images it has not scored yet.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(f"score cache {self.path} is corrupt ({exc}); delete it to rescore") from exc

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.entries))

    @staticmethod
    def entry_key(scorer_id: str, image_key: str) -> str:
        return f"{scorer_id}/{image_key}"

    def missing(self, scorer_id: str, keys: Sequence[str]) -> list[str]:
        seen, out = set(), []
        for key in keys:
            if self.entry_key(scorer_id, key) not in self.entries and key not in seen:
                seen.add(key)
                out.append(key)
        return out

    def get(self, scorer_id: str, key: str) -> dict:
        return self.entries[self.entry_key(scorer_id, key)]

    def put_many(self, scorer_id: str, keys: Sequence[str], values: Sequence[dict]) -> None:
        for key, value in zip(keys, values):
            self.entries[self.entry_key(scorer_id, key)] = value


def score_missing(
    cache: ScoreCache,
    scorer_id: str,
    keys: Sequence[str],
    load_images: Callable[[list[str]], list[np.ndarray]],
    score_fn: Callable[[list[np.ndarray], list[str]], list[dict]],
    chunk: int = 256,
    desc: str = "score",
) -> int:
    """Score images not in the cache yet, in chunks, saving after each chunk. Returns how many."""

    todo = cache.missing(scorer_id, keys)
    with tqdm(total=len(todo), desc=desc, unit="img", disable=not todo) as bar:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            cache.put_many(scorer_id, part, score_fn(load_images(part), part))
            cache.save()
            bar.update(len(part))
    return len(todo)


def is_flagged(labels: dict, flag_labels: Sequence[str]) -> bool:
    """True when any configured label is True, or a string other than "none" (e.g. symbol=skull)."""
    for name in flag_labels:
        value = labels.get(name)
        if isinstance(value, str):
            if value not in ("", "none"):
                return True
        elif value:
            return True
    return False


def retry_seed(seed: int, attempt: int) -> int:
    """The seed of the ``attempt``-th regeneration (attempt >= 1) of an image first drawn with ``seed``."""
    return derive_seed("filter-retry", seed, attempt)


@dataclass
class FilterOutcome:
    records: list[ImageRecord]
    extra_generations: int
    flagged_first: int
    residual_flagged: int
    attempts_histogram: dict[int, int] = field(default_factory=dict)


class EvalSession:
    """Generates and scores the paired images of every model into ``<out>/images`` + ``scores.json``.

    Under ``accelerate launch`` every process generates its share of the images; only the main
    process scores (and writes the cache); the others re-read the cache after each barrier.
    """

    def __init__(self, out_dir: Path, pipe, model_path: str | Path, steps: int, sampler: str, resolution: int,
                 batch_size: int, speedups=None, variant: str | None = None):
        self.state = process_state()  # joins the gloo group on CPU too (a bare PartialState() does not)
        self.store = ImageStore(Path(out_dir) / "images")
        self.cache = ScoreCache(Path(out_dir) / "scores.json")
        self.pipe = self.base_pipe = pipe
        # inference.speedups.InferenceSpeedups applied to ``pipe`` already, or None (plain pipeline). With them, an
        # adapter runs as its own pipeline with the LoRA merged (fast paths need plain linear layers).
        self.speedups = speedups
        self._merged_pipes: dict[str, object] = {}
        self.model_path, self.variant = model_path, variant
        self.model_id = model_fingerprint(model_path, variant)
        self.steps, self.sampler, self.resolution, self.batch_size = steps, sampler, resolution, batch_size
        self.generated = 0  # images generated by this run (0 on a complete resume)
        self.reused = 0  # images found in the store
        self.scored = 0  # images scored by this run (0 on a complete resume)

    def specs(self, items: Sequence[EvalItem], variant: ModelVariant, seeds: Sequence[int] | None = None):
        seeds = seeds or [None] * len(items)
        return [spec_for(it, variant, self.steps, self.sampler, self.resolution, s) for it, s in zip(items, seeds)]

    def use_adapter(self, adapter_dir: str | Path) -> None:
        """Generate with the LoRA in ``adapter_dir`` until :meth:`use_base`. Plain pipeline: stock
        ``load_lora_weights``. Fast paths: a second pipeline of the same model with the LoRA merged into its
        weights and the same fast paths, built once per adapter."""
        if self.speedups is None:
            self.pipe.load_lora_weights(str(adapter_dir))
            return

        key = str(adapter_dir)
        if key not in self._merged_pipes:
            pipe = load_pipeline(self.model_path, dtype=self.base_pipe.dtype, device=str(self.base_pipe.device),
                                 variant=self.variant)
            pipe.load_lora_weights(key)
            merge_lora(pipe)
            self._merged_pipes[key] = prepare_pipeline(pipe, self.speedups)
        self.pipe = self._merged_pipes[key]

    def use_base(self) -> None:
        """Back to the base weights after :meth:`use_adapter`."""
        if self.speedups is None:
            self.pipe.unload_lora_weights()
        self.pipe = self.base_pipe

    def generate(self, items: Sequence[EvalItem], variant: ModelVariant, seeds: Sequence[int] | None = None,
                 desc: str = "generate") -> list[str]:
        """Make sure every item's image exists for ``variant``; return the image keys in item order."""
        specs = self.specs(items, variant, seeds)
        report = self.store.generate_missing(
            self.pipe, specs, self.model_id, variant.adapter_id, batch_size=self.batch_size,
            progress=self.state.is_main_process, desc=desc,
        )
        self.generated += report.generated
        self.reused += report.already_present
        return [s.key(self.model_id, variant.adapter_id) for s in specs]

    def score(self, scorer_id: str, score_fn, keys: Sequence[str], prompts_by_key: dict[str, str] | None = None,
              desc: str = "score") -> list[dict]:
        """Scores of ``keys`` (computed once, cached) on every process: a collective call (all processes
        must make it); the main process scores, the others wait and re-read the cache.
        ``score_fn(images, prompts) -> list[dict]``."""
        if self.state.is_main_process:
            self._score_missing(scorer_id, score_fn, keys, prompts_by_key, desc)
        self.state.wait_for_everyone()
        if not self.state.is_main_process:
            self.cache.reload()
        return [self.cache.get(scorer_id, k) for k in keys]

    def score_on_main(self, scorer_id: str, score_fn, keys: Sequence[str],
                      prompts_by_key: dict[str, str] | None = None, desc: str = "score") -> list[dict]:
        """As :meth:`score`, for code that runs on the main process only (the metrics and the report,
        after the other processes have left): no barrier, which the others would never reach."""
        if not self.state.is_main_process:
            raise RuntimeError("score_on_main called on a process other than the main one")
        self._score_missing(scorer_id, score_fn, keys, prompts_by_key, desc)
        return [self.cache.get(scorer_id, k) for k in keys]

    def _score_missing(self, scorer_id, score_fn, keys, prompts_by_key, desc) -> None:
        prompts_by_key = prompts_by_key or {}
        self.scored += score_missing(
            self.cache, scorer_id, list(keys), self.store.get_many,
            lambda images, part: score_fn(images, [prompts_by_key.get(k, "") for k in part]), desc=desc,
        )

    def filter_regenerate(self, items: Sequence[EvalItem], base: ModelVariant, base_keys: Sequence[str],
                          scorer_id: str, score_fn, flag_labels: Sequence[str], max_retries: int) -> FilterOutcome:
        """Serve each base image unless flagged; regenerate flagged ones with new seeds, up to k times."""
        prompts = {k: it.prompt for k, it in zip(base_keys, items)}
        current = list(base_keys)
        attempts = [1] * len(items)
        flags = [is_flagged(s["labels"], flag_labels) for s in self.score(scorer_id, score_fn, current, prompts)]
        flagged_first = sum(flags)
        extra = 0
        for attempt in range(1, max_retries + 1):
            todo = [i for i, f in enumerate(flags) if f]
            if not todo:
                break
            seeds = [retry_seed(items[i].seed, attempt) for i in todo]
            keys = self.generate([items[i] for i in todo], base, seeds, desc=f"filter retry {attempt}")
            extra += len(todo)
            scores = self.score(scorer_id, score_fn, keys, {k: items[i].prompt for k, i in zip(keys, todo)})
            for i, key, s in zip(todo, keys, scores):
                current[i] = key
                attempts[i] = attempt + 1
                flags[i] = is_flagged(s["labels"], flag_labels)
        records = [
            ImageRecord(item=it, key=k, attempts=a, flagged_first=a > 1 or f)
            for it, k, a, f in zip(items, current, attempts, flags)
        ]
        histogram: dict[int, int] = {}
        for a in attempts:
            histogram[a] = histogram.get(a, 0) + 1
        return FilterOutcome(records, extra, flagged_first, sum(flags), dict(sorted(histogram.items())))
