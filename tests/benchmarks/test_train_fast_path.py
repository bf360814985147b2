"""The trainer's fast configuration as the bench runs it (cached latents, channels_last, fused AdamW,
regional compile) trains the same losses as the simple path (VAE + text encoding each step, NCHW,
plain AdamW, eager) on fixed inputs: same seeds, same pairs, same noise."""

from __future__ import annotations

import json

import pytest

from benchmarks.synthetic_data import write_synthetic_set
from benchmarks.train_bench import TrainPoint, run_trainer, trainer_kernels, trainer_overrides


def _losses(work_dir):
    rows = [json.loads(line) for line in (work_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows], [r["mse/policy"] for r in rows]


def _train(model, data, work, point, extra):
    section = trainer_overrides(point, model, data, work, steps=3, log_every=1, extra=extra)
    # beta small enough that the losses move away from log 2 but stay comparable.
    section.update(beta=500.0, learning_rate=1e-2)
    # aot_eager: dynamo capture + AOT autograd (what inductor compiles) in seconds on CPU.
    run_trainer(section, trainer_kernels(point, compile_backend="aot_eager"))
    return _losses(work)


@pytest.fixture(scope="module")
def bench_set(tmp_path_factory):
    return write_synthetic_set(tmp_path_factory.mktemp("set") / "set", num_pairs=4, resolution=32)


def test_fast_config_matches_simple_path(tiny_sd15_path, bench_set, tmp_path):
    simple = _train(tiny_sd15_path, bench_set, tmp_path / "simple", TrainPoint(2, False, "simple"),
                    {"fused_optimizer": False})
    fast = _train(tiny_sd15_path, bench_set, tmp_path / "fast",
                  TrainPoint(2, False, "fast", regional_compile=True, channels_last=True), {"fused_optimizer": True})
    (simple_loss, simple_mse), (fast_loss, fast_mse) = simple, fast
    assert len(simple_loss) == len(fast_loss) == 3
    assert len(set(round(v, 6) for v in simple_loss)) > 1, "losses should move over the steps"
    for a, b in zip(simple_loss + simple_mse, fast_loss + fast_mse):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (simple, fast)


def test_gradient_checkpointing_matches(tiny_sd15_path, bench_set, tmp_path):
    plain = _train(tiny_sd15_path, bench_set, tmp_path / "a", TrainPoint(2, False, "fast"), {})
    ckpt = _train(tiny_sd15_path, bench_set, tmp_path / "b", TrainPoint(2, True, "fast"), {})
    for a, b in zip(plain[0] + plain[1], ckpt[0] + ckpt[1]):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a))
