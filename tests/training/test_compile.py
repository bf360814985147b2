"""Regional compile (training/regional_compile.py) computes the same policy/reference outputs and LoRA
gradients as the eager UNet, with the adapter switched on and off."""

from __future__ import annotations

import pytest
import torch

from training.config import LoraSettings
from training.lora import adapters_disabled, add_lora
from training.regional_compile import compile_lora_free_regions, lora_free_regions


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


def _inputs(unet, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    return (
        torch.randn(batch, 4, size, size, generator=gen),
        torch.tensor([10, 700]),
        torch.randn(batch, 16, unet.config.cross_attention_dim, generator=gen),
    )


def _policy_ref_grads(unet, inputs):
    sample, t, text = inputs
    with torch.no_grad(), adapters_disabled(unet):
        reference = unet(sample, t, text).sample
    unet.zero_grad(set_to_none=True)
    policy = unet(sample, t, text).sample
    policy.pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.requires_grad}
    return policy.detach(), reference, grads


def _check_same(eager, compiled, rtol):
    (p0, r0, g0), (p1, r1, g1) = eager, compiled
    assert not torch.allclose(p0, r0), "fixture broken: LoRA on and off give the same output"
    assert (p1 - p0).norm() / p0.norm() < rtol
    assert (r1 - r0).norm() / r0.norm() < rtol
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        assert (g1[name] - g0[name]).norm() / (g0[name].norm() + 1e-12) < rtol, name


def test_regions_hold_no_lora(tiny_sd15_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = _lora_unet(tiny_sd15_path)
    regions = lora_free_regions(unet)
    assert regions, "expected ResNet blocks / feed-forwards"
    assert not any(isinstance(m, BaseTunerLayer) for r in regions for m in r.modules())
    # With LoRA on the feed-forward too, the feed-forwards are no longer LoRA-free.
    unet_ff = _lora_unet(tiny_sd15_path)
    before = len(lora_free_regions(unet_ff))
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel.from_pretrained(str(tiny_sd15_path), subfolder="unet")
    add_lora(other, LoraSettings(rank=4, alpha=4.0, target_modules=["to_q", "ff.net.2"]))
    assert len(lora_free_regions(other)) < before


def test_regional_compile_matches_eager_graph_capture(tiny_sd15_path):
    """Dynamo capture + AOT autograd of every region (the graphs inductor would compile), fast on CPU."""
    unet = _lora_unet(tiny_sd15_path)
    inputs = _inputs(unet)
    eager = _policy_ref_grads(unet, inputs)
    assert compile_lora_free_regions(unet, backend="aot_eager") > 0
    _check_same(eager, _policy_ref_grads(unet, inputs), rtol=1e-5)


@pytest.mark.slow
def test_regional_compile_matches_eager_inductor(tiny_sd15_path):
    unet = _lora_unet(tiny_sd15_path)
    inputs = _inputs(unet)
    eager = _policy_ref_grads(unet, inputs)
    compile_lora_free_regions(unet, backend="inductor")
    _check_same(eager, _policy_ref_grads(unet, inputs), rtol=1e-4)
