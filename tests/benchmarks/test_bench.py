"""make bench: the CPU smoke run end to end, config errors, published architecture sizes, FLOP counting."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.bench import main


def test_smoke_bench_end_to_end(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    assert main(["--smoke", f"work_dir={work}", f"results_dir={results}"]) == 0
    (result_file,) = results.glob("*.json")
    data = json.loads(result_file.read_text())
    assert data["environment"]["torch"] == torch.__version__
    assert (work / "resolved_config.yaml").is_file()
    for name in ("sd15", "sdxl"):
        arch = data["archs"][name]
        assert arch["unet_forward_tflop"] > 0
        points = arch["train"]["points"]
        assert points and all(p["status"] == "ok" for p in points), points
        for p in points:
            assert p["pairs_per_s"] > 0 and math.isfinite(p["final_loss"])
            assert p["counted_tflop_per_pair"] > 0 and 0 < p["mfu_6fwd"]
        gen = arch["generation"]
        assert gen["plain_images_per_s"] > 0 and gen["generator_images_per_s"] > 0
        # fuse_qkv + channels_last (the smoke run's speedups) recompute the same images.
        assert gen["images_vs_plain"]["max_abs_diff_levels"] <= 2
        assert gen["unet_step_rel_error"] < 1e-4
    sd15_flops = data["archs"]["sd15"]["train"]["counted_tflop_per_pair"]
    # The simple path also runs the VAE encoder and the text encoder on every step.
    assert sd15_flops["simple"] > sd15_flops["fast"]
    assert data["archs"]["sd15"]["train"]["fast_over_simple"] > 0


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    assert main(["--smoke", f"work_dir={tmp_path}", "archs=[sd3]"]) == 2
    assert "sd3" in capsys.readouterr().err
    assert main(["--smoke", f"work_dir={tmp_path}", "sd15.train_point=[]"]) == 2
    assert "train_point" in capsys.readouterr().err


def test_bench_yaml_compile_points_and_trainer_keys(tmp_path):
    """configs/bench.yaml: the whole-UNet compile points come right after the regional-compile ones, and
    each point hands the trainer its compile_unet mode."""
    from benchmarks.bench import DEFAULT_CONFIG, train_points
    from benchmarks.config import BenchConfig
    from benchmarks.train_bench import trainer_overrides
    from core.config import config_from_dict, load_stage_config
    from training.config import TrainConfig

    cfg = load_stage_config(BenchConfig, DEFAULT_CONFIG, "bench")
    for arch, full in {"sd15": ["fast-mb16-fullcompile", "fast-mb32-fullcompile"],
                       "sdxl": ["fast-mb4-fullcompile"]}.items():
        points = train_points(cfg.arch(arch))
        labels = [p.label for p in points]
        last_regional = max(i for i, p in enumerate(points) if p.regional_compile)
        assert labels[last_regional + 1:last_regional + 1 + len(full)] == full, labels
        for point in points:
            section = trainer_overrides(point, tmp_path, tmp_path, tmp_path, steps=1, log_every=1, extra={})
            trainer_cfg = config_from_dict(TrainConfig, section, where="train")
            assert trainer_cfg.unet_compile_mode() == ("full" if point.full_compile else
                                                       "regions" if point.regional_compile else "none")


def test_bench_point_with_two_compile_modes_is_a_config_error(tmp_path, capsys):
    both = "sd15.train_points=[{micro_batch: 2, regional_compile: true, full_compile: true}]"
    assert main(["--smoke", f"work_dir={tmp_path}", both]) == 2
    assert "regional_compile and full_compile" in capsys.readouterr().err


def test_bench_point_compile_options_reach_the_trainer_and_the_label(tmp_path, capsys):
    from benchmarks.bench import train_points
    from benchmarks.config import ArchSettings, PointSettings
    from benchmarks.train_bench import trainer_kernels, trainer_overrides
    from core.config import config_from_dict
    from training.config import TrainConfig

    arch = ArchSettings(train_points=[PointSettings(
        32, full_compile=True, compile_options={"coordinate_descent_tuning": True, "conv_1x1_as_mm": True})])
    (point,) = train_points(arch)
    assert point.label == "fast-mb32-fullcompile-conv_1x1_as_mm-coordinate_descent_tuning"
    section = trainer_overrides(point, tmp_path, tmp_path, tmp_path, steps=1, log_every=1, extra={})
    trainer_cfg = config_from_dict(TrainConfig, section, where="train")
    # The options reach the trainer as its KernelOptions (training/kernels.py), checked against that config.
    kernels = trainer_kernels(point)
    assert kernels.compile_options == {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True}
    kernels.validate(trainer_cfg)
    eager_with_options = "sd15.train_points=[{micro_batch: 2, compile_options: {conv_1x1_as_mm: true}}]"
    assert main(["--smoke", f"work_dir={tmp_path}", eager_with_options]) == 2
    assert "compile_options need regional_compile or full_compile" in capsys.readouterr().err


def test_bench_point_trainer_overrides_win_over_the_bench_wide_ones_and_name_the_point(tmp_path):
    """Per-point trainer keys (A/B points in one call, e.g. fused_lora on and off) are applied after
    bench.trainer_extra and appear in the label, so two points of one run never share a name."""
    from benchmarks.bench import train_points
    from benchmarks.config import ArchSettings, PointSettings
    from benchmarks.train_bench import trainer_overrides
    from core.config import config_from_dict
    from training.config import TrainConfig

    arch = ArchSettings(train_points=[PointSettings(48, full_compile=True),
                                      PointSettings(48, full_compile=True, trainer={"fused_lora": "off"})])
    fused, peft = train_points(arch)
    assert fused.label == "fast-mb48-fullcompile" and peft.label == "fast-mb48-fullcompile-fused_lora=off"
    extra = {"fused_lora": "on", "beta": 2500.0}
    configs = [config_from_dict(TrainConfig, trainer_overrides(p, tmp_path, tmp_path, tmp_path, 1, 1, extra),
                                where="train") for p in (fused, peft)]
    assert [c.use_fused_lora("cuda") for c in configs] == [True, False]
    assert [c.beta for c in configs] == [2500.0, 2500.0]


def test_bench_point_trainer_overrides_may_not_change_what_the_point_describes(tmp_path, capsys):
    hidden = "sd15.train_points=[{micro_batch: 2, trainer: {micro_batch_size: 8, fused_lora: off}}]"
    assert main(["--smoke", f"work_dir={tmp_path}", hidden]) == 2
    assert "trainer ['micro_batch_size']: set by the point's own fields" in capsys.readouterr().err


def test_architectures_match_published_sizes():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from benchmarks import architectures as A

    with torch.device("meta"):
        counts = {
            "sd15_unet": A.param_count(UNet2DConditionModel(**A.SD15_UNET)),
            "sdxl_unet": A.param_count(UNet2DConditionModel(**A.SDXL_UNET)),
            "vae": A.param_count(AutoencoderKL(**A.SD15_VAE)),
            "clip_l": A.param_count(CLIPTextModel(CLIPTextConfig(**A.CLIP_VIT_L_TEXT))),
            "bigg": A.param_count(CLIPTextModelWithProjection(CLIPTextConfig(**A.OPENCLIP_BIGG_TEXT))),
        }
    # Published parameter counts of runwayml/stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0.
    assert counts == {
        "sd15_unet": 859_520_964,
        "sdxl_unet": 2_567_463_684,
        "vae": 83_653_863,
        "clip_l": 123_060_480,
        "bigg": 694_659_840,
    }


def test_flop_count_is_linear_in_batch(tiny_sd15_path):
    from benchmarks.generation_bench import unet_probe_inputs
    from benchmarks.measure import count_flops
    from core.models import load_pipeline

    pipe = load_pipeline(tiny_sd15_path)
    with torch.no_grad():
        one = count_flops(lambda: pipe.unet(**unet_probe_inputs(pipe, 1, 32)))
        three = count_flops(lambda: pipe.unet(**unet_probe_inputs(pipe, 3, 32)))
    assert one > 0 and three == 3 * one


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_architecture_spec(arch):
    from benchmarks.architectures import arch_spec

    assert arch_spec(arch, "full").latent_size * 8 == arch_spec(arch, "full").resolution


def test_reference_cache_point_times_its_pass_and_counts_the_step_without_the_reference(tmp_path, capsys):
    """A bench point with trainer reference_cache on: its own pass is computed (not an earlier point's file) and
    timed, the one-run figure folds it in, and its counted FLOPs per pair leave the reference forward out."""
    work, results = tmp_path / "work", tmp_path / "results"
    points = "sd15.train_points=[{micro_batch: 2}, {micro_batch: 2, trainer: {reference_cache: on}}]"
    assert main(["--smoke", f"work_dir={work}", f"results_dir={results}", "archs=[sd15]", "parts=[train]",
                 points]) == 0
    (result_file,) = results.glob("*.json")
    train = json.loads(result_file.read_text())["archs"]["sd15"]["train"]
    inline, cached = train["points"]
    assert cached["label"] == "fast-mb2-reference_cache=True" and cached["flops_key"] == "fast-refcache"  # YAML on
    assert cached["reference_pass"]["steps_computed"] == cached["steps"]
    assert cached["reference_pass"]["steps_reused"] == 0
    rate, loop = cached["reference_pass_pairs_per_s"], cached["pairs_per_s"]
    assert rate > 0 and cached["one_run_pairs_per_s"] == pytest.approx(1 / (1 / loop + 1 / rate))
    assert "reference_pass" not in inline
    flops = train["counted_tflop_per_pair"]
    # Policy forward + backward without the reference's forward (2 of ~8 UNet forward-equivalents per pair).
    assert 0.6 * flops["fast"] < flops["fast-refcache"] < 0.9 * flops["fast"]
    assert "ref pass" in capsys.readouterr().out
