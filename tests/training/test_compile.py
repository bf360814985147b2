"""torch.compile of the LoRA UNet (training/compile.py) computes what the eager UNet computes, with the
adapters on (the DPO policy) and off (the DPO reference): outputs, LoRA gradients of a DPO loss, trainer
losses; and the guards that keep the two adapter states apart.

Backends. The fast tests use ``aot_eager``: dynamo's capture and guards (which decide which graph runs
in which adapter state; the same for every backend) plus AOT autograd, i.e. all but inductor's code
generation, in seconds. Inductor on this 2-core CPU needs ~90 s for the tiny UNet's two graphs (forward
+ backward), so the inductor tests are marked slow; they pick inductor when a C++ compiler is found and
fall back to aot_eager otherwise, and print which.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from core.errors import ConfigError
from tests.training.conftest import tiny_config
from tests.training.test_sdxl_and_ddp import (
    assert_same_as_single_process, train_one_process_micro_4, train_two_processes,
)
from tests.training.test_train import EQUIVALENCE, _assert_same_run
from training.compile import compile_lora_free_regions, compile_whole_unet, lora_free_regions, lora_layers
from training.config import LoraSettings
from training.kernels import KernelOptions
from training.lora import adapters_disabled, add_lora
from training.loss import diffusion_dpo_loss, per_sample_mse
from training.train import train


def pick_backend() -> str:
    """inductor when a C++ compiler is on PATH (inductor's CPU code generation needs one), else aot_eager."""
    backend = "inductor" if any(shutil.which(cc) for cc in ("g++", "c++", "clang++")) else "aot_eager"
    print(f"torch.compile backend for this test: {backend}")
    return backend


def _lora_unet(model_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(model_path), subfolder="unet")
    torch.manual_seed(0)
    add_lora(unet, LoraSettings(rank=4, alpha=4.0))
    # B is zero at init (policy == reference); give it values so the adapter switch matters.
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return unet


def _inputs(unet, pairs=1, seed=0):
    """(noisy latents, timesteps, text states, denoising target) for ``pairs`` pairs: winners then losers
    along the batch (2 x pairs rows), as training/step.py stacks them."""
    gen = torch.Generator().manual_seed(seed)
    size, rows = unet.config.sample_size, 2 * pairs
    timesteps = torch.tensor([10, 700, 300, 999][:pairs]).repeat(2)
    return (
        torch.randn(rows, 4, size, size, generator=gen),
        timesteps,
        torch.randn(rows, 16, unet.config.cross_attention_dim, generator=gen),
        torch.randn(rows, 4, size, size, generator=gen),
    )


def _dpo_step(unet, inputs, beta=100.0):
    """The trainer's two passes (training/step.py): reference with adapters off and no grad, then the
    policy with grad; one sigmoid DPO loss, backward. Returns (policy, reference, LoRA gradients)."""
    sample, t, text, target = inputs
    with torch.no_grad(), adapters_disabled(unet):
        reference = unet(sample, t, text).sample
    unet.zero_grad(set_to_none=True)
    policy = unet(sample, t, text).sample
    errors = (*per_sample_mse(policy, target).chunk(2), *per_sample_mse(reference, target).chunk(2))
    loss, _ = diffusion_dpo_loss(*errors, beta, "sigmoid")
    loss.backward()
    grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.requires_grad}
    return policy.detach(), reference, grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / (b.norm() + 1e-12))


def _check_same(eager, compiled, rtol):
    (p0, r0, g0), (p1, r1, g1) = eager, compiled
    assert _relative(p0, r0) > 1e-2, "fixture broken: LoRA on and off give (nearly) the same output"
    assert _relative(p1, p0) < rtol, "policy (adapters on) differs from eager"
    assert _relative(r1, r0) < rtol, "reference (adapters off) differs from the eager base model"
    assert _relative(r1, p0) > 1e-2, "reference pass returned the LoRA output"
    assert g0.keys() == g1.keys() and len(g0) > 0
    assert all(g.norm() > 0 for g in g0.values()), "fixture broken: a LoRA gradient is zero"
    for name in g0:
        assert _relative(g1[name], g0[name]) < rtol, name


def _set_adapter_flags(unet, disabled: bool) -> None:
    """peft's per-layer switch alone, without the requires_grad flip that ``disable_adapters`` also
    does: the flip changes other guarded values and could hide a missing guard on the switch."""
    for layer in lora_layers(unet):
        layer._disable_adapters = disabled


# --- regions --------------------------------------------------------------------------------------


def test_regions_hold_no_lora(tiny_sd15_path):
    from diffusers import UNet2DConditionModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = _lora_unet(tiny_sd15_path)
    regions = lora_free_regions(unet)
    assert regions, "expected ResNet blocks / feed-forwards"
    assert not any(isinstance(m, BaseTunerLayer) for r in regions for m in r.modules())
    # With LoRA on the feed-forward too, the feed-forwards are no longer LoRA-free.
    other = UNet2DConditionModel.from_pretrained(str(tiny_sd15_path), subfolder="unet")
    add_lora(other, LoraSettings(rank=4, alpha=4.0, target_modules=["to_q", "ff.net.2"]))
    assert len(lora_free_regions(other)) < len(regions)


def test_regional_compile_matches_eager_graph_capture(tiny_sd15_path):
    """Dynamo capture + AOT autograd of every region (the graphs inductor would compile), fast on CPU."""
    unet = _lora_unet(tiny_sd15_path)
    inputs = _inputs(unet)
    eager = _dpo_step(unet, inputs)
    assert compile_lora_free_regions(unet, backend="aot_eager") > 0
    _check_same(eager, _dpo_step(unet, inputs), rtol=1e-5)


@pytest.mark.slow
def test_regional_compile_matches_eager_inductor(tiny_sd15_path):
    unet = _lora_unet(tiny_sd15_path)
    inputs = _inputs(unet)
    eager = _dpo_step(unet, inputs)
    compile_lora_free_regions(unet, backend=pick_backend())
    _check_same(eager, _dpo_step(unet, inputs), rtol=1e-4)


# --- full -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full(tiny_sd15_path):
    """One whole-UNet compile shared by the tests below: the eager results, then the first compiled DPO
    step (which traces both adapter states: policy with grad, reference without)."""
    unet = _lora_unet(tiny_sd15_path)
    inputs = _inputs(unet, pairs=2)
    eager = _dpo_step(unet, inputs)
    compiled_fn = compile_whole_unet(unet, backend="aot_eager")
    first = _dpo_step(unet, inputs)
    return SimpleNamespace(unet=unet, inputs=inputs, eager=eager, first=first, compiled_fn=compiled_fn,
                           eager_forward=unet.forward.__wrapped__)


def test_full_compile_matches_eager(full):
    _check_same(full.eager, full.first, rtol=1e-5)


def test_full_compile_alternates_adapter_states_on_cached_graphs(full):
    """on / off / on / off ...: each state reuses its own graph (any retrace raises) and computes the
    right function."""
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(3):
            _check_same(full.eager, _dpo_step(full.unet, full.inputs), rtol=1e-5)


def test_full_compile_reference_after_policy_is_the_base_model(full):
    """The known pitfall: a compiled UNet keeps returning the LoRA output after the adapters are
    switched off. Here both calls run without grad and the switch leaves requires_grad alone, so only
    a guard on the adapter state can tell the two calls apart."""
    sample, t, text, _ = full.inputs
    policy, reference, _ = full.eager
    with torch.no_grad():
        for _ in range(2):
            assert _relative(full.unet(sample, t, text).sample, policy) < 1e-5
        _set_adapter_flags(full.unet, disabled=True)
        try:
            out = full.unet(sample, t, text).sample
        finally:
            _set_adapter_flags(full.unet, disabled=False)
        assert _relative(out, reference) < 1e-5 and _relative(out, policy) > 1e-2
        assert _relative(full.unet(sample, t, text).sample, policy) < 1e-5


def test_full_compile_guards_on_the_explicit_adapter_state(full):
    """Called with a state that contradicts the layers, no cached graph may run: the policy graph
    (traced with adapters_enabled=True) must reject adapters_enabled=False through the guard on that
    argument, which is what keeps the states apart whatever dynamo does with peft's flags."""
    sample, t, text, _ = full.inputs
    with torch.compiler.set_stance("fail_on_recompile"), pytest.raises(RuntimeError, match=r"adapters_enabled"):
        full.compiled_fn(False, full.eager_forward, sample, t, text)


def test_dynamo_also_guards_on_peft_adapter_flags(full):
    """The second, independent guard (dynamo's own, torch >= 2.5 inlines nn.Modules): with the explicit
    state claiming "on" but every layer switched off, the policy graph is still rejected."""
    sample, t, text, _ = full.inputs
    _set_adapter_flags(full.unet, disabled=True)
    try:
        with torch.compiler.set_stance("fail_on_recompile"), pytest.raises(RuntimeError, match=r"_disable_adapters"):
            full.compiled_fn(True, full.eager_forward, sample, t, text)
    finally:
        _set_adapter_flags(full.unet, disabled=False)


def test_full_compile_rejects_a_mixed_adapter_state(full):
    sample, t, text, _ = full.inputs
    layer = lora_layers(full.unet)[0]
    layer._disable_adapters = True
    try:
        with pytest.raises(RuntimeError, match="1 of .* LoRA layers are disabled"):
            full.unet(sample, t, text)
    finally:
        layer._disable_adapters = False


@pytest.mark.slow
def test_full_compile_matches_eager_inductor(tiny_sd15_path):
    unet = _lora_unet(tiny_sd15_path)
    inputs = _inputs(unet, pairs=2)
    eager = _dpo_step(unet, inputs)
    compile_whole_unet(unet, backend=pick_backend())
    for _ in range(2):  # first call traces, second runs the cached graphs
        _check_same(eager, _dpo_step(unet, inputs), rtol=1e-4)


# --- trainer --------------------------------------------------------------------------------------


def _full(*extra: str) -> tuple[str, ...]:
    return ("compile_unet=full", *extra)


AOT_EAGER = KernelOptions(compile_backend="aot_eager")


def test_train_full_compile_matches_eager(tiny_sd15_path, tiny_set, tmp_path):
    train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "eager", *EQUIVALENCE))
    train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / "full", *EQUIVALENCE, *_full()), kernels=AOT_EAGER)
    _assert_same_run(tmp_path / "eager", tmp_path / "full")


@pytest.mark.slow
@pytest.mark.parametrize("model, setting", [
    ("tiny_sd15_path", "gradient_checkpointing=true"),  # checkpointed blocks traced inside the graph
    ("tiny_sd15_path", "channels_last=true"),
    ("tiny_sdxl_path", "lora.alpha=8"),  # pooled text + time ids; a LoRA scale != 1
])
def test_train_full_compile_variants_match_eager(model, setting, tiny_set, tmp_path, request):
    model = request.getfixturevalue(model)
    train(tiny_config(model, tiny_set, tmp_path / "eager", *EQUIVALENCE, setting))
    train(tiny_config(model, tiny_set, tmp_path / "full", *EQUIVALENCE, *_full(setting)), kernels=AOT_EAGER)
    _assert_same_run(tmp_path / "eager", tmp_path / "full")


@pytest.mark.slow
def test_two_process_ddp_full_compile_matches_single_process_eager(tiny_sd15_path, tiny_set, tmp_path):
    """DDP wraps the compiled module (accelerator.prepare after compile_unet); the reference pass runs on
    the unwrapped module, which must still be the compiled one with its adapter-state guard."""
    train_one_process_micro_4(tiny_sd15_path, tiny_set, tmp_path / "single")
    train_two_processes(tiny_sd15_path, tiny_set, tmp_path / "ddp", port=29519,
                        kernels={"compile_backend": "aot_eager"}, compile_unet="full")
    assert_same_as_single_process(tmp_path / "single", tmp_path / "ddp")


def test_compile_config_keys(tiny_sd15_path, tiny_set, tmp_path):
    cfg = tiny_config(tiny_sd15_path, tiny_set, tmp_path)
    assert cfg.unet_compile_mode() == "none"
    assert tiny_config(tiny_sd15_path, tiny_set, tmp_path, "compile_regions=true").unet_compile_mode() == "regions"
    both = tiny_config(tiny_sd15_path, tiny_set, tmp_path, "compile_regions=true", "compile_unet=regions")
    assert both.unet_compile_mode() == "regions"
    with pytest.raises(ConfigError, match="contradicts compile_unet: full"):
        tiny_config(tiny_sd15_path, tiny_set, tmp_path, "compile_regions=true", "compile_unet=full")
    with pytest.raises(ConfigError, match="compile_backend 'nope'"):
        KernelOptions(compile_backend="nope").validate(tiny_config(tiny_sd15_path, tiny_set, tmp_path,
                                                                   "compile_unet=full"))
    with pytest.raises(ConfigError, match="compile_unet"):
        tiny_config(tiny_sd15_path, tiny_set, tmp_path, "compile_unet=off")  # YAML's off is false
    auto = tiny_config(tiny_sd15_path, tiny_set, tmp_path, "compile_unet=auto")
    assert auto.unet_compile_mode("cuda") == "full" and auto.unet_compile_mode("cpu") == "none"
    with pytest.raises(ConfigError, match="contradicts compile_unet: auto"):
        tiny_config(tiny_sd15_path, tiny_set, tmp_path, "compile_regions=true", "compile_unet=auto")


def test_compile_options_are_checked_against_inductor(tiny_sd15_path, tiny_set, tmp_path):
    full = tiny_config(tiny_sd15_path, tiny_set, tmp_path, "compile_unet=full")
    KernelOptions(compile_options={"conv_1x1_as_mm": True, "coordinate_descent_tuning": False}).validate(full)
    with pytest.raises(ConfigError, match=r"compile_options \['conv_one_by_one'\]: not inductor options"):
        KernelOptions(compile_options={"conv_one_by_one": True}).validate(full)
    with pytest.raises(ConfigError, match="need compile_unet regions, full or auto"):
        KernelOptions(compile_options={"conv_1x1_as_mm": True}).validate(tiny_config(tiny_sd15_path, tiny_set,
                                                                                     tmp_path))
    with pytest.raises(ConfigError, match="compile_backend inductor"):
        KernelOptions(compile_backend="aot_eager", compile_options={"conv_1x1_as_mm": True}).validate(full)
    # The trainer checks them before anything loads.
    with pytest.raises(ConfigError, match="compile_backend inductor"):
        train(full, kernels=KernelOptions(compile_backend="aot_eager", compile_options={"conv_1x1_as_mm": True}))
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("key, value", [("compile_backend", "aot_eager"), ("allow_tf32", "false"),
                                        ("compile_options", "{conv_1x1_as_mm: true}")])
def test_kernel_choices_are_not_config_keys(tiny_sd15_path, tiny_set, tmp_path, key, value):
    """A YAML train: section that still sets a kernel choice fails naming where it went."""
    with pytest.raises(ConfigError, match=rf"train\.{key} was removed: .*KernelOptions"):
        tiny_config(tiny_sd15_path, tiny_set, tmp_path, "compile_unet=full", f"{key}={value}")


@pytest.mark.parametrize("mode", ["regions", "full"])
def test_compile_options_reach_torch_compile(tiny_sd15_path, monkeypatch, mode):
    """The options go to inductor through torch.compile's ``options=`` in both modes (and nothing when
    none are set, so inductor keeps its defaults and ``mode`` stays usable)."""
    from training import compile as compile_module

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: seen.append(kw))
    compile_module.compile_unet(_lora_unet(tiny_sd15_path), mode, options={"conv_1x1_as_mm": True})
    compile_module.compile_unet(_lora_unet(tiny_sd15_path), mode)
    with_options = [kw for kw in seen if kw["options"] == {"conv_1x1_as_mm": True}]
    without = [kw for kw in seen if kw["options"] is None]
    assert with_options and len(with_options) == len(without) == len(seen) // 2


@pytest.mark.slow
def test_full_compile_with_inductor_options_matches_eager(tiny_sd15_path):
    """Inductor options choose kernels, not maths: 1x1 convolutions as matrix products (proj_in/out and
    the shortcut convolutions of the UNet) give the eager outputs and LoRA gradients."""
    unet = _lora_unet(tiny_sd15_path)
    inputs = _inputs(unet, pairs=2)
    eager = _dpo_step(unet, inputs)
    compile_whole_unet(unet, backend=pick_backend(), options={"conv_1x1_as_mm": True})
    _check_same(eager, _dpo_step(unet, inputs), rtol=1e-4)
