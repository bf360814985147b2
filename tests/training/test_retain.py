"""The retain (anchoring) term: zero at initialisation, exact under resume/accumulation, and it does
what it is for: it keeps the LoRA close to the base model on the retain prompts."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import DataError
from core.images import encode_png
from tests.training.conftest import tiny_config
from tests.training.test_train import EQUIVALENCE, _assert_same_run, _losses
from training.callbacks import StopAtStep
from training.train import train

RETAIN_CAPTIONS = ["a cup on a table", "a quiet street", "a lamp in a room"]


def write_tiny_retain_set(folder: Path, count: int = 6, size: int = 32, corrupt_row: int | None = None) -> Path:
    from preference_sets.retain import make_retain_row, write_retain_set

    rng = np.random.default_rng(7)
    rows = []
    for i in range(count):
        image = b"not an image" if i == corrupt_row else encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        rows.append(make_retain_row(RETAIN_CAPTIONS[i % 3], image, i, "tiny", {"steps": 2}, {}))
    write_retain_set(rows, folder, {"source": "test"})
    return folder


@pytest.fixture(scope="session")
def tiny_retain(tmp_path_factory) -> Path:
    return write_tiny_retain_set(tmp_path_factory.mktemp("retain") / "retain")


def _retain_args(folder: Path, weight: float = 1.0, micro: int = 2) -> tuple[str, ...]:
    return (f"retain.data={folder}", f"retain.weight={weight}", f"retain.micro_batch_size={micro}")


@pytest.mark.parametrize("target", ["reference", "data"])
def test_anchor_distance_is_zero_at_init_then_positive_with_gradient(tiny_sd15_path, tiny_set, tiny_retain, tmp_path,
                                                                      target):
    from training.cache import CachedPairSource, CachedRetainSource, build_cache_tensors, load_or_build_retain_cache
    from training.config import LoraSettings
    from training.data import load_pairs, load_retain
    from training.lora import add_lora
    from training.models import NoiseSchedule, load_components
    from training.step import StepModel, draw_retain_step, draw_step, pair_errors

    components = load_components(str(tiny_sd15_path))
    pairs = load_pairs(tiny_set, components.resolution)
    retain = load_retain(tiny_retain, components.resolution)
    source = CachedPairSource(components, build_cache_tensors(components, pairs, "cpu", show_progress=False), "cpu")
    retain_source = CachedRetainSource(
        components, load_or_build_retain_cache(components, retain, tmp_path, "cpu", True, False), "cpu")
    schedule = NoiseSchedule(components.alphas_cumprod, components.scheduler_prediction_type, "cpu")
    unet = components.unet
    torch.manual_seed(0)
    params = add_lora(unet, LoraSettings(rank=4, alpha=4.0))
    shape = (unet.config.in_channels, components.latent_size, components.latent_size)
    draws = draw_step(0, 0, 2, len(pairs), shape, schedule.num_train_timesteps, 0.0, "cpu")
    retain_draws = draw_retain_step(0, 0, 3, len(retain_source), shape, schedule.num_train_timesteps, "cpu")
    retain_batch = (retain_source.batch(retain_draws), retain_draws)

    model = StepModel(unet, unet, schedule, contextlib.nullcontext)
    *_, distance = pair_errors(model, source.batch(draws), draws, True, retain=retain_batch, retain_target=target)
    assert distance.item() == 0.0  # LoRA B = 0: policy = reference exactly
    if target == "data":  # prior preservation: already a pull towards the images at θ = ref
        distance.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        return
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    *_, distance = pair_errors(model, source.batch(draws), draws, True, retain=retain_batch, retain_target=target)
    assert distance.item() > 0.0
    distance.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_training_with_retain_resumes_exactly(tiny_sd15_path, tiny_set, tiny_retain, tmp_path):
    common = ("max_train_steps=4", "checkpoint_every=2", *_retain_args(tiny_retain))
    full, parted = tmp_path / "full", tmp_path / "parted"
    summary = train(tiny_config(tiny_sd15_path, tiny_set, full, *common))
    assert summary["retain"]["images"] == 6
    assert "retain/distance" in summary["final_metrics"]
    train(tiny_config(tiny_sd15_path, tiny_set, parted, *common), [StopAtStep(2)])
    train(tiny_config(tiny_sd15_path, tiny_set, parted, *common, "resume=latest"))
    for step in (3, 4):
        assert _losses(parted)[step] == pytest.approx(_losses(full)[step], abs=1e-6)


def test_retain_accumulation_matches_larger_batch(tiny_sd15_path, tiny_set, tiny_retain, tmp_path):
    accumulated, single = tmp_path / "accum", tmp_path / "single"
    train(tiny_config(tiny_sd15_path, tiny_set, accumulated, "micro_batch_size=2", "gradient_accumulation_steps=2",
                      *_retain_args(tiny_retain, micro=1), *EQUIVALENCE))
    train(tiny_config(tiny_sd15_path, tiny_set, single, "micro_batch_size=4", "gradient_accumulation_steps=1",
                      *_retain_args(tiny_retain, micro=2), *EQUIVALENCE))
    _assert_same_run(single, accumulated)


def test_anchor_keeps_the_model_closer_to_the_base_on_retain_prompts(tiny_sd15_path, tiny_set, tiny_retain, tmp_path):
    """Same DPO run with and without a strong anchor: the anchored LoRA ends closer to the reference on
    the retain images (the distance the anchored run logs, measured for both on the last steps)."""
    common = ("max_train_steps=6", "learning_rate=5e-3", "beta=100")
    free = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "free", *common,
                             *_retain_args(tiny_retain, weight=1e-9)))  # ~0: logs the distance, no pull
    anchored = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "anchored", *common,
                                 *_retain_args(tiny_retain, weight=2000.0)))
    free_d = [_losses(tmp_path / "free", "retain/distance")[s] for s in (5, 6)]
    anchored_d = [_losses(tmp_path / "anchored", "retain/distance")[s] for s in (5, 6)]
    assert sum(anchored_d) < 0.5 * sum(free_d), (anchored_d, free_d)
    assert free["final_metrics"]["retain/distance"] > 0


def test_missing_or_corrupt_retain_set_fails_before_training(tiny_sd15_path, tiny_set, tmp_path):
    with pytest.raises(DataError, match="retain set .* does not exist"):
        train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "a", *_retain_args(tmp_path / "nowhere")))
    bad = write_tiny_retain_set(tmp_path / "bad", corrupt_row=3)
    with pytest.raises(DataError, match="row 3"):
        train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "b", *_retain_args(bad)))
    assert not (tmp_path / "a" / "lora").exists() and not (tmp_path / "b" / "lora").exists()


def test_global_batch_sizes_split_over_accumulation(tiny_sd15_path, tiny_set, tiny_retain, tmp_path):
    """pairs_per_step / retain.images_per_step (the recipe's global batch) derive the per-micro-batch sizes:
    4 pairs + 2 retain images per step over 2 accumulation steps == micro-batches of 4 and 2 in one step."""
    derived, single = tmp_path / "derived", tmp_path / "single"
    summary = train(tiny_config(tiny_sd15_path, tiny_set, derived, "pairs_per_step=4", "micro_batch_size=3",
                                "gradient_accumulation_steps=2", *_retain_args(tiny_retain, micro=5),
                                "retain.images_per_step=2", *EQUIVALENCE))
    assert summary["pairs_per_step"] == 4
    assert summary["micro_batch_per_process"] == {"pairs": 2, "retain_images": 1}
    train(tiny_config(tiny_sd15_path, tiny_set, single, "micro_batch_size=4", "gradient_accumulation_steps=1",
                      *_retain_args(tiny_retain, micro=2), *EQUIVALENCE))
    _assert_same_run(single, derived)
