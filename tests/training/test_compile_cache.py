"""Compile once, reuse across runs: the auto rule's decision, the cache key, the timeline in the summary, the batched
latent encoder against the one-process one, and the cuda_graph log wording."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from training.cache import build_cache_tensors, encode_pair_latents_batched
from training.compile_cache import (
    CompileCache, GraphSpec, JobShape, decide_compile, decide_reference_compile, decide_step_compile,
)
from training.data import load_pairs
from training.graph import graph_blockers
from training.models import load_components
from training.train import load_config, train

from .conftest import tiny_config


def _spec(**changes) -> GraphSpec:
    spec = GraphSpec(torch_version="2.11.0+cu130", device_name="NVIDIA H100 80GB HBM3", unet_architecture="abc",
                     pair_micro_batch=16, retain_micro_batch=0, latent_shape=(4, 64, 64), mixed_precision="bf16",
                     lora=(8, 8.0, ("to_q", "to_k", "to_v", "to_out.0"), 0.0, False), fused_lora="auto",
                     gradient_checkpointing=False, channels_last=False, reference_in_step=False, backend="inductor")
    return replace(spec, **changes)


def test_the_rule_compiles_only_when_the_saving_exceeds_the_compile():
    short = decide_compile("step", 1536, 1 / 49, 1 / 83, 122.0, warm=False, source="estimate")
    long = decide_compile("step", 80_000, 1 / 49, 1 / 83, 122.0, warm=False, source="estimate")
    assert not short.compile and short.saving_s < 0
    assert long.compile and long.saving_s > 0
    assert "1536 pair visits" in short.describe() and "eager" in short.describe() and "cold" in short.describe()
    assert long.describe().startswith("step: compile:")


def test_step_decision_uses_the_record_of_this_machine_and_a_warm_cache(tmp_path):
    job = JobShape("sd", 64 * 64, 32 * 400, reference_in_step=False)  # 12,800 pair visits: ~107 s saved
    cold = CompileCache(tmp_path, _spec())
    assert not decide_step_compile(cold, job, "full").compile  # against 122 s of cold compiling
    cold.note_compile("full", 120.0, 1 / 83, warm=False)
    cold.write_record()
    warm = CompileCache(tmp_path, _spec())  # a later run of the same key reads the record
    decision = decide_step_compile(warm, job, "full")
    assert decision.warm and decision.compile and decision.compile_s < 120.0
    # measured rates win over the prior: a machine where compiling gains nothing never compiles
    warm.note_rate("none", 1 / 83)
    assert not decide_step_compile(warm, job, "full").compile
    assert decide_step_compile(warm, job, "full").source == "partly measured on this machine"


def test_reference_pass_runs_eager_for_short_jobs_and_compiled_for_long_ones(tmp_path):
    cache = CompileCache(tmp_path, _spec())
    job = JobShape("sd", 64 * 64, 32 * 48, reference_in_step=False)
    assert not decide_reference_compile(cache, job, "full", rows_to_compute=48, pairs_per_step=32).compile
    assert decide_reference_compile(cache, job, "full", rows_to_compute=2500, pairs_per_step=32).compile


def test_the_cache_key_changes_with_what_the_graph_depends_on():
    base = _spec().key()
    for change in [{"torch_version": "2.12.0"}, {"device_name": "NVIDIA H200"}, {"unet_architecture": "def"},
                   {"pair_micro_batch": 48}, {"mixed_precision": "fp16"}, {"latent_shape": (4, 128, 128)},
                   {"lora": (16, 16.0, ("to_q",), 0.0, False)}, {"fused_lora": "off"},
                   {"gradient_checkpointing": True}, {"reference_in_step": True},
                   {"options": (("max_autotune", "True"),)}]:
        assert _spec(**change).key() != base, change
    assert _spec().key() == base  # and is stable


def test_activate_points_the_caches_into_the_folder_unless_the_environment_chose(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    env = CompileCache(tmp_path / "cc", _spec()).activate()
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cc" / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / "mine")


def test_summary_has_the_timeline_and_both_rates(tiny_sd15_path, tiny_set, tmp_path):
    cfg = tiny_config(tiny_sd15_path, tiny_set, tmp_path / "run", "reference_cache=on", "max_train_steps=4",
                      "log_every=2")
    summary = json.loads(json.dumps(train(cfg)))
    timeline = summary["timeline_s"]
    for key in ("train_called", "setup_done", "caches_done", "model_done", "reference_pass_done", "first_step_done", "steps_done",
                "latent_cache_s", "reference_pass_s"):
        assert key in timeline, key
    assert 0 < timeline["train_called"] < timeline["setup_done"] <= timeline["first_step_done"] <= timeline["steps_done"]
    assert summary["pairs_per_s_wall"] > 0 and summary["pairs_per_s"] > summary["pairs_per_s_wall"]
    assert summary["compile"]["mode"] == "none"
    written = json.loads((tmp_path / "run" / "lora" / "training_summary.json").read_text())
    assert written["timeline_s"]["first_step_done"] == timeline["first_step_done"]


def test_batched_latent_encoder_matches_the_one_process_path(tiny_sd15_path, tiny_set):
    components = load_components(str(tiny_sd15_path))
    pairs = load_pairs(tiny_set, components.resolution)
    reference = build_cache_tensors(components, pairs, "cpu", show_progress=False)
    expected = torch.stack([reference["latents_w"], reference["latents_l"]], dim=1)
    fp32 = encode_pair_latents_batched(components, pairs, "cpu", "fp32", workers=2, show_progress=False)
    torch.testing.assert_close(fp32, expected, rtol=1e-5, atol=1e-5)
    bf16 = encode_pair_latents_batched(components, pairs, "cpu", "bf16", workers=0, show_progress=False)
    assert bf16.dtype == torch.float32 and bf16.shape == expected.shape
    assert ((bf16 - expected).abs().max() / expected.abs().max()) < 3e-2  # bf16: 8 bits of mantissa per rounding
    # the CPU's fp32 cache is the one-process path's, bit for bit (the demo's numbers do not move)
    again = build_cache_tensors(components, pairs, "cpu", show_progress=False, precision="fp32")
    assert torch.equal(again["latents_w"], reference["latents_w"])


def test_cuda_graph_log_line_does_not_advise_turning_compile_off():
    reasons = graph_blockers(load_config(None, ["model=m", "compile_unet=full"]), "cuda", 1, "bf16", "sd")
    assert len(reasons) == 1 and "compiled" in reasons[0] and "set compile_unet: none" not in reasons[0]
