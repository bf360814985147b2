"""benchmarks/profile_train_step.py: kernel categories, and the script end to end on the tiny models (CPU smoke)."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import profile_train_step


@pytest.mark.parametrize("name, expected", [
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", "attention"),
    ("void cudnn::fusion::convert_dq_to_16bits<true>(void const*)", "attention"),
    ("void cudnn::fusion::compute_dot_do_o<true>(void const*)", "attention"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>", "layout transpose"),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT", "matmul (cuBLAS/CUTLASS)"),
    ("triton_poi_fused_cat_gelu_gelu_backward_mul_split_view_5", "triton (fused element-wise, norms)"),
    # inductor names kernels after the ops they fuse: a group norm + SiLU next to a convolution is not one
    ("triton_per_fused_add_clone_convolution_native_group_norm_silu_unsqueeze_13", "triton (fused element-wise, norms)"),
    ("triton_tem_fused_mm_0", "matmul (inductor Triton templates)"),
])
def test_kernel_categories(name, expected):
    assert profile_train_step.category(name) == expected


def test_smoke_run_writes_the_profile(tmp_path, monkeypatch):
    out = tmp_path / "profile.json"
    monkeypatch.setattr(sys, "argv", ["profile_train_step", "--micro-batch", "2", "--compile", "none",
                                      "--warmup-steps", "1", "--steps", "1", "--work", str(tmp_path / "work"),
                                      "--out", str(out)])
    profile_train_step.main()
    record = json.loads(out.read_text())
    assert record["args"]["micro_batch"] == 2 and record["trainer_summary"]["steps"] == 3
    assert set(record) >= {"gpu_ms_per_step", "by_category_ms", "top_kernels_ms"}
