"""train.cuda_graph on a CPU: the setting's validation and resolution, and the graph path's static-input step
(training/graph.py, run eagerly where nothing can be captured) against the eager trainer step.

The capture itself needs a CUDA GPU: benchmarks/cuda_graph_check.py compares captured and eager runs there
(docs/performance.md, "CUDA-graph training step")."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.errors import ConfigError
from tests.training.conftest import tiny_config
from tests.training.test_retain import _retain_args, tiny_retain  # noqa: F401  (fixture)
from tests.training.test_train import EQUIVALENCE, _assert_same_run, _lora, _losses
from training.callbacks import StaticInputStep, StopAtStep
from training.checkpoints import config_digest
from training.config import TrainConfig
from training.graph import graph_blockers, resolve_cuda_graph, restore_optimizer_flags
from training.train import load_config, train


def test_setting_spellings_and_bad_values():
    # YAML reads on/off as booleans; both spellings mean the same.
    assert load_config(None, ["model=m", "cuda_graph=on"]).cuda_graph_setting() == "on"
    assert load_config(None, ["model=m", "cuda_graph=off"]).cuda_graph_setting() == "off"
    assert load_config(None, ["model=m", "cuda_graph='on'"]).cuda_graph_setting() == "on"
    assert load_config(None, ["model=m"]).cuda_graph_setting() == "auto"
    with pytest.raises(ConfigError, match="cuda_graph"):
        load_config(None, ["model=m", "cuda_graph=sometimes"])


def test_digest_does_not_depend_on_cuda_graph():
    """Checkpoints written before the option existed, and by eager or graphed runs, resume under any value."""
    cfg = TrainConfig(model="m", data="set")
    for value in ("on", "off", True, False):
        assert config_digest(dataclasses.replace(cfg, cuda_graph=value)) == config_digest(cfg)


def _blockers(*overrides: str, device: str = "cuda", processes: int = 1, precision: str = "bf16",
              family: str = "sd") -> list[str]:
    return graph_blockers(load_config(None, ["model=m", *overrides]), device, processes, precision, family)


def test_blockers_name_each_reason():
    assert _blockers() == []  # the demo's case: one CUDA process, bf16, cached latents, SD
    assert _blockers("mixed_precision=fp32", precision="no") == []
    # The trained text encoder's forward is captured with the step (checked against eager on a GPU: graph.py).
    assert _blockers("lora.text_encoder_modules=[q_proj,v_proj]") == []
    cases = {
        "not a CUDA GPU": _blockers(device="cpu"),
        "2 processes": _blockers(processes=2),
        "fp16": _blockers(precision="fp16"),
        "compile_unet": _blockers("compile_unet=auto"),  # auto = full on CUDA
        "cache_latents": _blockers("cache_latents=false"),
        "SDXL": _blockers(family="sdxl"),
        "gradient_checkpointing": _blockers("gradient_checkpointing=true"),
        "lora.dropout": _blockers("lora.dropout=0.1"),
        "use_dora": _blockers("lora.use_dora=true"),
    }
    for words, reasons in cases.items():
        assert len(reasons) == 1 and words in reasons[0], (words, reasons)
    # compile_unet auto resolves to none on a CPU, so it blocks only where it compiles.
    assert not any("compile_unet" in r for r in _blockers("compile_unet=auto", device="cpu"))


def test_resolution_auto_on_off():
    assert resolve_cuda_graph("auto", []) is True
    assert resolve_cuda_graph("on", []) is True
    assert resolve_cuda_graph("auto", ["x"]) is False
    assert resolve_cuda_graph("off", []) is False
    with pytest.raises(ConfigError, match="cannot be captured here: first; second"):
        resolve_cuda_graph("on", ["first", "second"])


def test_on_without_cuda_is_a_clear_error_before_loading(tiny_sd15_path, tiny_set, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"cuda_graph=on.*not a CUDA GPU"):
        train(tiny_config(tiny_sd15_path, tiny_set, run, "cuda_graph=on"))
    assert not (run / "work" / "cache").exists()  # nothing was encoded or loaded
    assert not (run / "lora").exists()


def test_auto_is_off_on_cpu(tiny_sd15_path, tiny_set, tmp_path):
    summary = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "run", "cuda_graph=auto", "max_train_steps=1"))
    assert summary["cuda_graph"] is False


# What the static-input step must reproduce: accumulation (grads summed in place over micro-steps), prompt dropout,
# a per-pair option (RPO α per risk: a gather with the static indices), the retain anchor (its own static draws),
# warm-up LR.
STATIC_CASE = ("gradient_accumulation_steps=2", "prompt_dropout=0.3", "rpo_alpha_per_risk.exposure=0.1", "max_train_steps=4",
               "lr_scheduler=linear", "lr_warmup_steps=2", *EQUIVALENCE)


def test_static_step_matches_eager_step(tiny_sd15_path, tiny_set, tiny_retain, tmp_path):  # noqa: F811
    """training/graph.py's step on static inputs (copied draws, tensor LR, zero_grad before each eager step, metrics
    as one vector) trains exactly what the eager step trains. On a CPU nothing is captured, so this checks the
    refactoring that capture needs, not the capture."""
    eager, static = tmp_path / "eager", tmp_path / "static"
    retain = _retain_args(tiny_retain, weight=0.5)
    assert train(tiny_config(tiny_sd15_path, tiny_set, eager, *STATIC_CASE, *retain))["cuda_graph"] is False
    train(tiny_config(tiny_sd15_path, tiny_set, static, *STATIC_CASE, *retain), [StaticInputStep()])
    _assert_same_run(eager, static)
    # Every metric, not only loss and grad_norm; the LR column is the scheduler's float in both. The rewards are
    # β·(difference of two float32 MSEs of order 1): their resolution is β times the MSEs' (≈ 1e-7), so that is the
    # absolute bound. (torch 2.15.0+cu132 on CPU: steps 1-3 bitwise equal, step 4 one or two MSE ulps apart.)
    beta = float(next(arg for arg in EQUIVALENCE if arg.startswith("beta=")).split("=")[1])
    expected, got = _all_metrics(eager), _all_metrics(static)
    assert expected.keys() == got.keys() and len(expected) == 4
    for step, values in expected.items():
        assert values.keys() == got[step].keys()
        for name, value in values.items():
            assert got[step][name] == pytest.approx(value, rel=1e-5, abs=beta * 1e-7), (step, name)


def test_static_step_resume_matches_uninterrupted(tiny_sd15_path, tiny_set, tmp_path):
    """The graph path resumes exactly, from its own checkpoint and from an eager run's."""
    common = ("max_train_steps=4", "checkpoint_every=2", "lr_scheduler=linear", "lr_warmup_steps=1")
    full = tmp_path / "full"
    train(tiny_config(tiny_sd15_path, tiny_set, full, *common), [StaticInputStep()])
    for first_static in (True, False):
        parted = tmp_path / f"parted-{first_static}"
        first_part = [StopAtStep(2), *([StaticInputStep()] if first_static else [])]
        assert train(tiny_config(tiny_sd15_path, tiny_set, parted, *common), first_part) == {"stopped_at": 2}
        train(tiny_config(tiny_sd15_path, tiny_set, parted, *common, "resume=latest"), [StaticInputStep()])
        full_losses, parted_losses = _losses(full), _losses(parted)
        for step in (3, 4):
            assert parted_losses[step] == pytest.approx(full_losses[step], abs=1e-6)
        for key, value in _lora(full).items():
            torch.testing.assert_close(_lora(parted)[key], value, atol=1e-6, rtol=0)


def _all_metrics(run_dir) -> dict[int, dict[str, float]]:
    from training.metrics import read_metrics

    return {r["step"]: {k: v for k, v in r.items() if k not in ("step", "pairs_per_s", "pairs_per_s_wall")}
            for r in read_metrics(run_dir / "lora" / "metrics.jsonl")}


def test_metric_vector_sums_like_named_metrics():
    from training.metrics import MetricAccumulator

    class OneProcess:
        num_processes = 1

    named, vector = MetricAccumulator(), MetricAccumulator()
    names = ("loss", "grad_norm")
    for step in range(3):
        values = torch.tensor([0.5 + step, 2.0 * step], dtype=torch.float32)
        named.add(dict(zip(names, values.unbind())))
        vector.add_vector(names, values)
        values.fill_(float("nan"))  # a graph overwrites its output on the next replay: the sum must not alias it
        named.end_step()
        vector.end_step()
    assert vector.reduce(OneProcess()) == named.reduce(OneProcess()) == {"loss": 1.5, "grad_norm": 2.0}
    with pytest.raises(ValueError, match="names changed"):
        vector.add_vector(names, torch.zeros(2))
        vector.add_vector(("loss",), torch.zeros(1))


def test_resume_restores_this_runs_optimizer_flags():
    """load_state_dict takes the checkpoint's param-group flags; a graphed run resuming an eager checkpoint must
    keep its own (capturable) and have ``step`` where they want it (float32 on the parameter's device)."""
    param = torch.nn.Parameter(torch.ones(3))
    eager = torch.optim.AdamW([param], lr=0.1, fused=False, foreach=False)
    param.grad = torch.ones(3)
    eager.step()
    state = eager.state_dict()
    assert state["param_groups"][0]["fused"] is False
    assert state["state"][0]["step"].dtype == torch.float32 and state["state"][0]["step"].device.type == "cpu"

    resumed = torch.optim.AdamW([param], lr=0.1, fused=True)
    flags = [{"capturable": False, "fused": True, "foreach": None}]
    resumed.load_state_dict(state)
    assert resumed.param_groups[0]["fused"] is False  # what this function is for
    restore_optimizer_flags(resumed, flags)
    assert resumed.param_groups[0]["fused"] is True
    step = resumed.state[param]["step"]
    assert step.dtype == torch.float32 and step.device == param.device and float(step) == 1.0
    resumed.step()  # the fused CPU kernel accepts the state as restored
    assert float(resumed.state[param]["step"]) == 2.0


def test_copy_draws_refuses_a_shape_that_would_broadcast():
    from training.step import copy_draws_, draw_step, static_draws_like

    draws = draw_step(0, 0, 4, 8, (4, 8, 8), 1000, 0.0, "cpu")
    static = static_draws_like(draws, "cpu")
    copy_draws_(static, draws)
    assert torch.equal(static.noise, draws.noise) and torch.equal(static.cpu_indices, draws.cpu_indices)
    with pytest.raises(ValueError, match="noise"):
        copy_draws_(static, dataclasses.replace(draws, noise=draws.noise[:1]))
