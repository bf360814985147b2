"""training/reference_cache.py: the reference losses computed in a pass before the loop are the numbers the
inline reference forward computes, so a run with the cache trains the same run; the file is keyed, reused,
extended, survives a crash and is recomputed when broken; the step then runs no reference forward."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import training.step
from core.errors import ConfigError
from tests.training.conftest import tiny_config
from tests.training.test_sdxl_and_ddp import assert_same_as_single_process, train_two_processes
from tests.training.test_train import EQUIVALENCE, _assert_same_run, _losses
from training.callbacks import StaticInputStep, StopAtStep
from training.reference_cache import (
    extend_reference_errors, gather_step_errors, read_reference_errors, write_reference_errors,
)
from training.step import StepDraws
from training.train import train

CACHE = ("reference_cache=on",)


def _summary(run_dir) -> dict:
    return json.loads((run_dir / "lora" / "training_summary.json").read_text())


# --- pure functions ------------------------------------------------------------------------------------------------


def test_gather_puts_each_process_micro_slice_where_micro_slice_takes_it():
    processes, accumulation, micro_batch = 2, 3, 4
    pairs = processes * accumulation * micro_batch
    values = torch.arange(pairs * 2, dtype=torch.float32).view(pairs, 2)  # what each position of the step holds
    draws = StepDraws(torch.arange(pairs), torch.arange(pairs), torch.zeros(pairs, 1), torch.zeros(pairs),
                      torch.zeros(pairs, dtype=torch.bool), values)
    local = [torch.stack([draws.micro_slice(a, r, processes, micro_batch).reference_errors
                          for a in range(accumulation)]) for r in range(processes)]

    def gather(_):  # accelerate's gather: the processes' tensors concatenated along dim 0, process-major
        return torch.cat(local)

    assert torch.equal(gather_step_errors(local[0], gather, processes), values)
    assert torch.equal(gather_step_errors(local[0], lambda t: t, 1)[:micro_batch], values[:micro_batch])


def test_file_round_trip_and_broken_files_are_recomputed(tmp_path):
    path = tmp_path / "reference-x.safetensors"
    assert read_reference_errors(path, 4).shape == (0, 4, 2)  # no file yet
    rows = torch.randn(3, 4, 2)
    write_reference_errors(path, rows)
    assert torch.equal(read_reference_errors(path, 4), rows)
    with pytest.warns(UserWarning, match="not \\(S, 5, 2\\)"):
        assert read_reference_errors(path, 5).shape == (0, 5, 2)  # another E: never trusted
    write_reference_errors(path, torch.full((2, 4, 2), float("nan")))
    with pytest.warns(UserWarning, match="non-finite"):
        assert read_reference_errors(path, 4).shape == (0, 4, 2)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.warns(UserWarning, match="unreadable"):
        assert read_reference_errors(path, 4).shape == (0, 4, 2)


def test_extend_keeps_existing_rows_computes_the_rest_and_saves():
    existing = torch.full((2, 3, 2), -1.0)
    computed, saved = [], []

    def compute_step(step):
        computed.append(step)
        return torch.full((3, 2), float(step))

    rows, reused, seconds, rate = extend_reference_errors(existing, 5, compute_step, "cpu", saved.append,
                                                          show_progress=False)
    assert computed == [2, 3, 4] and reused == 2
    assert torch.equal(rows[:2], existing) and torch.equal(rows[4], torch.full((3, 2), 4.0))
    assert torch.equal(saved[-1], rows) and seconds >= 0 and rate is not None and rate > 0
    # Enough rows already: nothing computed, nothing written, the first `steps` rows returned.
    rows, reused, seconds, rate = extend_reference_errors(rows, 4, compute_step, "cpu", saved.append,
                                                          show_progress=False)
    assert rows.shape[0] == 4 and reused == 4 and computed == [2, 3, 4] and len(saved) == 1 and rate is None


@pytest.mark.parametrize("override, message", [
    ("loss_type=sft", "sft has no reference"),
    ("cache_latents=false", "cache_latents"),
    ("retain.weight=0.5", "retain anchor"),
    ("reference_cache=sometimes", "train.reference_cache: 'sometimes'"),
])
def test_config_refuses_what_it_cannot_cache(tiny_sd15_path, tiny_set, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tiny_sd15_path, tiny_set, tmp_path, "reference_cache=on", override)


def test_yaml_true_is_on(tiny_sd15_path, tiny_set, tmp_path):
    assert tiny_config(tiny_sd15_path, tiny_set, tmp_path, "reference_cache=true").uses_reference_cache()
    assert not tiny_config(tiny_sd15_path, tiny_set, tmp_path, "reference_cache=false").uses_reference_cache()


# --- the trainer ---------------------------------------------------------------------------------------------------


def test_cached_reference_trains_the_same_run_without_a_reference_forward(tiny_sd15_path, tiny_set, tmp_path,
                                                                          monkeypatch):
    inline, cached = tmp_path / "inline", tmp_path / "cached"
    common = ("prompt_dropout=0.3", "max_train_steps=4", *EQUIVALENCE)
    train(tiny_config(tiny_sd15_path, tiny_set, inline, *common))

    calls = {"reference": 0, "pass": 0}
    real_prediction, real_pass = training.step._reference_prediction, training.step.reference_pair_errors

    def counting_prediction(*args, **kwargs):
        calls["reference"] += 1
        return real_prediction(*args, **kwargs)

    def counting_pass(*args, **kwargs):
        calls["pass"] += 1
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(training.step, "_reference_prediction", counting_prediction)
    monkeypatch.setattr("training.trainer.reference_pair_errors", counting_pass)
    summary = train(tiny_config(tiny_sd15_path, tiny_set, cached, *common, *CACHE))
    # 4 steps x 1 micro-batch in the pass, and no reference forward anywhere else.
    assert calls == {"reference": 4, "pass": 4}
    info = summary["reference_cache"]
    assert info["steps_computed"] == 4 and info["steps_reused"] == 0
    assert info["file"].startswith(str(cached / "work" / "cache"))
    _assert_same_run(inline, cached)
    for metric in ("mse/reference", "rewards/margins"):
        assert _losses(cached, metric) == pytest.approx(_losses(inline, metric), rel=1e-5, abs=1e-8)


def test_static_step_reads_the_cached_errors_like_the_eager_step(tiny_sd15_path, tiny_set, tmp_path):
    """The CUDA-graph step's static inputs carry the step's cached errors (copied in like the draws): on a CPU its
    eager form must train the inline run, with accumulation slicing the (E, 2) rows per micro-step."""
    common = ("gradient_accumulation_steps=2", "prompt_dropout=0.3", "max_train_steps=4", *EQUIVALENCE)
    train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "inline", *common))
    train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "static", *common, *CACHE), [StaticInputStep()])
    _assert_same_run(tmp_path / "inline", tmp_path / "static")


def test_a_sweep_reuses_one_file_and_a_longer_run_extends_it(tiny_sd15_path, tiny_set, tmp_path):
    shared = tmp_path / "refs"
    first = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "a", *CACHE, f"reference_cache_dir={shared}",
                              *EQUIVALENCE))
    assert first["reference_cache"]["steps_computed"] == 3
    # Another β, learning rate, LoRA rank and loss type: the reference errors do not depend on them.
    other = ("beta=50", "learning_rate=0.02", "lora.rank=2", "lora.alpha=2", "loss_type=hinge", "adam_epsilon=1.0")
    reused = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "b", *CACHE, f"reference_cache_dir={shared}",
                               *other))
    assert reused["reference_cache"]["steps_reused"] == 3 and reused["reference_cache"]["steps_computed"] == 0
    train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "b-inline", *other))
    _assert_same_run(tmp_path / "b-inline", tmp_path / "b")
    # A longer run computes only the missing steps; the same micro-batches split differently reuse the file.
    longer = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "c", *CACHE, f"reference_cache_dir={shared}",
                               "max_train_steps=5", "micro_batch_size=1", "gradient_accumulation_steps=2",
                               *EQUIVALENCE))
    assert longer["reference_cache"]["steps_reused"] == 3 and longer["reference_cache"]["steps_computed"] == 2
    assert len(list(shared.glob("reference-*.safetensors"))) == 1
    # Another seed draws other noise: another file.
    seeded = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "d", *CACHE, f"reference_cache_dir={shared}",
                               "seed=1", *EQUIVALENCE))
    assert seeded["reference_cache"]["steps_computed"] == 3
    assert len(list(shared.glob("reference-*.safetensors"))) == 2


def test_broken_cache_file_is_recomputed_and_resume_matches(tiny_sd15_path, tiny_set, tmp_path):
    common = ("max_train_steps=4", "checkpoint_every=2", "lr_scheduler=linear", "lr_warmup_steps=1", *EQUIVALENCE)
    full, parted = tmp_path / "full", tmp_path / "parted"
    train(tiny_config(tiny_sd15_path, tiny_set, full, *common))
    assert train(tiny_config(tiny_sd15_path, tiny_set, parted, *common, *CACHE), [StopAtStep(2)]) == {"stopped_at": 2}
    (file,) = (parted / "work" / "cache").glob("reference-*.safetensors")
    file.write_bytes(file.read_bytes()[:50])  # a crash or a disk problem: the file no longer loads
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(tiny_config(tiny_sd15_path, tiny_set, parted, *common, *CACHE, "resume=latest"))
    assert any("unreadable" in str(w.message) for w in caught)
    assert summary["reference_cache"]["steps_computed"] == 4
    full_losses, parted_losses = _losses(full), _losses(parted)
    for step in (3, 4):
        assert parted_losses[step] == pytest.approx(full_losses[step], rel=1e-4, abs=1e-7)


@pytest.mark.slow
def test_two_processes_split_the_pass_and_match_one(tiny_sd15_path, tiny_set, tmp_path):
    """2 gloo processes compute their own micro-slices of each step and gather them into one file, which a
    1-process run with the same 4 pairs per step then reuses; both train the inline run."""
    shared = tmp_path / "refs"
    train_two_processes(tiny_sd15_path, tiny_set, tmp_path / "ddp", port=29523, reference_cache="on",
                        reference_cache_dir=str(shared))
    single = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "single", "micro_batch_size=4", *CACHE,
                               f"reference_cache_dir={shared}", *EQUIVALENCE))
    assert single["reference_cache"]["steps_reused"] == 3 and single["reference_cache"]["steps_computed"] == 0
    train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "inline", "micro_batch_size=4", *EQUIVALENCE))
    assert_same_as_single_process(tmp_path / "inline", tmp_path / "ddp")
    assert_same_as_single_process(tmp_path / "inline", tmp_path / "single")
