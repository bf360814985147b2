"""training/fused_lora.py computes what peft's LoRA layers compute: outputs and every gradient, eager and
under torch.compile, in fp32 and under bf16 autocast; the adapter switch and the saved LoRA are peft's; the
trainer trains the same run with it."""

from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from tests.training.conftest import tiny_config
from tests.training.test_compile import AOT_EAGER, _check_same, _dpo_step, _inputs, _lora_unet, pick_backend
from tests.training.test_train import EQUIVALENCE, _assert_same_run
from training.compile import compile_whole_unet
from training.fused_lora import FusedLoraLinear, fused_lora_blockers, install_fused_lora
from training.lora import adapters_disabled, read_lora_file
from training.train import train


class _Block(torch.nn.Module):
    """Two projections the way an attention block chains them: a bias-free one after a norm, and one with a
    bias feeding a residual add."""

    def __init__(self, width: int = 48):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.to_q = torch.nn.Linear(width, width, bias=False)
        self.to_out = torch.nn.Linear(width, width)

    def forward(self, x):
        return x + self.to_out(torch.nn.functional.gelu(self.to_q(self.norm(x))))


def _lora_block(rank: int = 4, alpha: float = 8.0, fused: bool = False, frozen_dtype=torch.float32,
                **lora_options) -> torch.nn.Module:
    """The block with a LoRA on both projections (scale alpha / rank = 2); ``frozen_dtype`` bf16 gives the
    trainer's dtypes (frozen weights bf16, LoRA weights fp32: training/lora.py add_lora)."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    block = _Block()
    block.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["to_q", "to_out"],
                        **{"init_lora_weights": "gaussian", **lora_options})
    block = inject_adapter_in_model(config, block, adapter_name="default")
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)  # B is zero at init; give the adapter an effect
            p.data = p.data.float() if "lora_" in name else p.data.to(frozen_dtype)
    if fused:
        assert install_fused_lora(block) == 2
    return block


def _run(block, x, autocast_dtype=None, compile_backend=None):
    """Output and the gradients of x and of every LoRA weight for a fixed quadratic loss."""
    fn = torch.compile(block, backend=compile_backend, fullgraph=True) if compile_backend else block
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        y = fn(x)
    (y.float().square().mean()).backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.requires_grad}
    block.zero_grad(set_to_none=True)
    return y.detach().float(), x.grad.float(), grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / (b.float().norm() + 1e-12))


def _assert_close(peft_run, fused_run, rtol: float) -> None:
    (y0, dx0, g0), (y1, dx1, g1) = peft_run, fused_run
    assert _relative(y1, y0) < rtol and _relative(dx1, dx0) < rtol
    assert g0.keys() == g1.keys() and len(g0) == 4
    for name in g0:
        assert g0[name].norm() > 0, f"fixture broken: {name} has no gradient"
        assert _relative(g1[name], g0[name]) < rtol, name


X = torch.randn(3, 20, 48, generator=torch.Generator().manual_seed(1))


def test_fused_layers_match_peft_in_fp32():
    _assert_close(_run(_lora_block(), X), _run(_lora_block(fused=True), X), rtol=1e-5)


def test_fused_layers_match_peft_with_the_trainers_dtypes():
    """bf16 frozen weights, fp32 LoRA weights, bf16 autocast, LoRA scale 2: what the trainer runs on a GPU."""
    x = X.to(torch.bfloat16)
    peft_run = _run(_lora_block(frozen_dtype=torch.bfloat16), x, torch.bfloat16)
    fused_run = _run(_lora_block(fused=True, frozen_dtype=torch.bfloat16), x, torch.bfloat16)
    _assert_close(peft_run, fused_run, rtol=1e-2)


def test_fused_layers_match_peft_under_bf16_autocast():
    """Both compute the products in bf16; they differ only in where s is applied and the sums rounded. The bound is
    set by peft's own compiled-versus-eager spread at these shapes (≈ 3e-3), not loosened to pass."""
    reference = _run(_lora_block(), X, torch.bfloat16)
    peft_compiled = _run(_lora_block(), X, torch.bfloat16, compile_backend="aot_eager")
    spread = max(_relative(a, b) for a, b in zip(reference[:2], peft_compiled[:2]))
    fused = _run(_lora_block(fused=True), X, torch.bfloat16)
    _assert_close(reference, fused, rtol=max(1e-2, 4 * spread))


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_fused_layers_match_peft_under_compile(autocast_dtype):
    """Traced by dynamo into one graph with the surrounding ops (fullgraph: no break at the autograd node)."""
    rtol = 1e-5 if autocast_dtype is None else 1e-2
    _assert_close(_run(_lora_block(), X, autocast_dtype),
                  _run(_lora_block(fused=True), X, autocast_dtype, compile_backend="aot_eager"), rtol)


def test_function_leaves_frozen_weights_and_a_constant_input_without_gradient():
    x = torch.randn(10, 16)  # the first LoRA layer of a UNet sees no input that requires grad
    weight, bias = torch.randn(12, 16), torch.randn(12)
    lora_a, lora_b = torch.randn(4, 16, requires_grad=True), torch.randn(12, 4, requires_grad=True)
    y = FusedLoraLinear.apply(x, weight, bias, lora_a, lora_b, 0.5, torch.float32)
    y.sum().backward()
    expected_a = 0.5 * (torch.ones(10, 12) @ lora_b).t() @ x
    expected_b = 0.5 * torch.ones(10, 12).t() @ (x @ lora_a.t())
    torch.testing.assert_close(lora_a.grad, expected_a.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lora_b.grad, expected_b.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, x @ weight.t() + bias + 0.5 * x @ lora_a.t() @ lora_b.t(), rtol=1e-5, atol=1e-5)


def test_adapter_switch_and_state_dict_are_peft_s():
    plain, fused = _lora_block(), _lora_block(fused=True)
    assert plain.state_dict().keys() == fused.state_dict().keys()
    with torch.no_grad(), adapters_disabled(fused), adapters_disabled(plain):
        base_fused, base_plain = fused(X), plain(X)
    torch.testing.assert_close(base_fused, base_plain)
    assert _relative(fused(X).detach(), base_fused) > 1e-2, "adapter on and off gave the same output"


@pytest.mark.parametrize("options", [{"lora_dropout": 0.1}, {"use_dora": True},
                                     {"lora_bias": True, "init_lora_weights": True}])
def test_layers_the_fused_route_cannot_compute_keep_peft_s_forward(options):
    block = _lora_block(**options)
    assert install_fused_lora(block) == 0
    assert "forward" not in vars(block.to_q)


def test_a_merged_or_second_adapter_falls_back_to_peft(monkeypatch):
    from peft import LoraConfig, inject_adapter_in_model

    calls = []
    original = FusedLoraLinear.apply
    monkeypatch.setattr(FusedLoraLinear, "apply", lambda *a: calls.append(1) or original(*a))
    block = _lora_block(fused=True)
    with torch.no_grad():
        expected = _lora_block()(X)
        block.to_q.merge()
        torch.testing.assert_close(block(X), expected, rtol=1e-5, atol=1e-5)
        assert len(calls) == 1  # to_out only: to_q is merged and runs its (merged) frozen layer
        block.to_q.unmerge()
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["to_out"]), block, adapter_name="other")
    block.to_q.set_adapter("default")
    block.to_out.set_adapter(["default", "other"])
    calls.clear()
    with torch.no_grad():
        block(X)
    assert len(calls) == 1  # to_q; to_out has two active adapters and runs peft's forward


def test_fused_route_is_taken_only_with_the_adapter_on(monkeypatch):
    calls = []
    original = FusedLoraLinear.apply
    monkeypatch.setattr(FusedLoraLinear, "apply", lambda *a: calls.append(1) or original(*a))
    block = _lora_block(fused=True)
    block(X)
    assert len(calls) == 2
    with adapters_disabled(block):
        block(X)
    assert len(calls) == 2


def test_blockers_name_what_the_fused_layer_does_not_do():
    assert fused_lora_blockers(0.0, False) == []
    reasons = fused_lora_blockers(0.1, True)
    assert len(reasons) == 2 and "dropout" in reasons[0] and "DoRA" in reasons[1]


def test_whole_unet_compile_with_fused_layers_matches_peft(tiny_sd15_path):
    """The trainer's fast configuration (compile_unet full): reference with adapters off, policy with the fused
    layers, DPO loss and LoRA gradients against peft's eager UNet; then alternation on cached graphs."""
    unet = _lora_unet(tiny_sd15_path)
    inputs = _inputs(unet, pairs=2)
    eager = _dpo_step(unet, inputs)
    assert install_fused_lora(unet) > 0
    compile_whole_unet(unet, backend="aot_eager")
    _check_same(eager, _dpo_step(unet, inputs), rtol=1e-5)
    with torch.compiler.set_stance("fail_on_recompile"):
        _check_same(eager, _dpo_step(unet, inputs), rtol=1e-5)


@pytest.mark.slow
def test_whole_unet_inductor_with_fused_layers_matches_peft(tiny_sd15_path):
    unet = _lora_unet(tiny_sd15_path)
    inputs = _inputs(unet, pairs=2)
    eager = _dpo_step(unet, inputs)
    install_fused_lora(unet)
    compile_whole_unet(unet, backend=pick_backend())
    for _ in range(2):
        _check_same(eager, _dpo_step(unet, inputs), rtol=1e-4)


def test_trainer_with_fused_layers_trains_the_same_run(tiny_sd15_path, tiny_set, tmp_path):
    """compile_unet full with fused_lora at its default (auto, the trainer's fast configuration) against peft's
    layers; a LoRA scale of 2 so that a misplaced s would show."""
    common = (*EQUIVALENCE, "compile_unet=full", "lora.alpha=8")
    peft_summary = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "peft", *common, "fused_lora=off"),
                         kernels=AOT_EAGER)
    fused_summary = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "fused", *common), kernels=AOT_EAGER)
    assert peft_summary["fused_lora_layers"] == 0 and fused_summary["fused_lora_layers"] > 0
    _assert_same_run(tmp_path / "peft", tmp_path / "fused")
    saved_keys = [read_lora_file(tmp_path / run / "lora")[0].keys() for run in ("peft", "fused")]
    assert saved_keys[0] == saved_keys[1]


def test_fused_lora_setting(tiny_sd15_path, tiny_set, tmp_path):
    cfg = tiny_config(tiny_sd15_path, tiny_set, tmp_path)  # compile_unet none: auto leaves peft's layers
    assert cfg.fused_lora_setting() == "auto" and not cfg.use_fused_lora("cuda")
    auto = tiny_config(tiny_sd15_path, tiny_set, tmp_path, "compile_unet=auto")
    assert auto.use_fused_lora("cuda") and not auto.use_fused_lora("cpu")
    assert not tiny_config(tiny_sd15_path, tiny_set, tmp_path, "compile_unet=full", "fused_lora=off").use_fused_lora()
    assert tiny_config(tiny_sd15_path, tiny_set, tmp_path, "fused_lora=true").use_fused_lora("cpu")
    dropout = tiny_config(tiny_sd15_path, tiny_set, tmp_path, "fused_lora=auto", "compile_unet=full",
                          "lora.dropout=0.1")
    assert not dropout.use_fused_lora("cuda")
    with pytest.raises(ConfigError, match="fused_lora=on.*dropout"):
        tiny_config(tiny_sd15_path, tiny_set, tmp_path, "fused_lora=on", "lora.dropout=0.1")
    with pytest.raises(ConfigError, match="fused_lora"):
        tiny_config(tiny_sd15_path, tiny_set, tmp_path, "fused_lora=sometimes")
