"""End-to-end trainer tests on the tiny SD1.5 fixture (CPU, fp32, a few steps each)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import tiny_config
from training.callbacks import StopAtStep
from training.lora import LORA_WEIGHT_NAME
from training.metrics import read_metrics
from training.train import train


def _lora(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "lora" / LORA_WEIGHT_NAME))


def _assert_same_lora(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0)


def _losses(run_dir: Path, metric: str = "loss") -> dict[int, float]:
    return {r["step"]: r[metric] for r in read_metrics(run_dir / "lora" / "metrics.jsonl")}


def _assert_same_run(a: Path, b: Path) -> None:
    """Same per-step losses and gradient norms, and the same final LoRA.

    The runs use ``EQUIVALENCE`` settings: with adam_epsilon = 1 Adam's update is ~ lr × momentum of the
    gradient, so it is sensitive to the gradient's scale (a missing 1/accumulation factor shows in the
    weights) and does not amplify float32 summation-order rounding the way g/sqrt(v) does on near-zero
    gradient entries. β = 100 instead of 5000: β/2 multiplies float32 MSE differences, whose rounding
    depends on the batch layout (~1e-7), and at 5000 that alone moves the loss by ~5e-5.
    """
    for metric in ("loss", "grad_norm"):
        expected = _losses(a, metric)
        assert expected.keys() == _losses(b, metric).keys()
        for step, value in _losses(b, metric).items():
            assert value == pytest.approx(expected[step], rel=1e-4, abs=1e-7), (metric, step)
    _assert_same_lora(_lora(a), _lora(b), atol=1e-6)


EQUIVALENCE = ("adam_epsilon=1.0", "learning_rate=0.05", "beta=100")


def test_train_writes_loadable_lora_and_card(tiny_sd15_path, tiny_set, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(tiny_sd15_path, tiny_set, run, "report_to=tensorboard"))
    out = run / "lora"
    assert list((run / "work" / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert {"pytorch_lora_weights.safetensors", "README.md", "resolved_config.yaml", "metrics.jsonl",
            "training_summary.json"} <= {p.name for p in out.iterdir()}
    assert summary["data"] == {"rows": 10, "ties_excluded": 2, "pairs_used": 8}
    # Step 1's loss is computed before any update: policy == reference, so exactly log 2.
    losses = _losses(run)
    assert losses[1] == pytest.approx(math.log(2.0), abs=1e-6)
    assert losses[3] != pytest.approx(math.log(2.0), abs=1e-6)
    # Two rates per record: the interval's steady rate and the wall-clock one, which counts the start-up too.
    records = read_metrics(out / "metrics.jsonl")
    assert 0 < records[0]["pairs_per_s_wall"] < records[0]["pairs_per_s"]
    assert all(r["pairs_per_s_wall"] > 0 for r in records)
    weights = _lora(run)
    assert weights and all("lora" in key for key in weights)  # only LoRA keys are saved
    assert any("lora_B" in k or "lora.up" in k for k in weights)
    card = (out / "README.md").read_text()
    assert summary["set_hash"] in card and "ties excluded | 2" in card

    from core.models import load_pipeline

    pipe = load_pipeline(tiny_sd15_path)

    def generate():
        return pipe("a photo of a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="np").images

    before = generate()
    pipe.load_lora_weights(str(out))  # stock diffusers loader
    after = generate()
    assert abs(after - before).max() > 1e-4


def test_lora_trains_and_base_stays_frozen(tiny_sd15_path, tiny_set):
    from training.cache import UncachedPairSource
    from training.config import LoraSettings
    from training.data import load_pairs
    from training.lora import add_lora
    from training.models import NoiseSchedule, load_components
    from training.step import DpoObjective, StepModel, dpo_loss_on_batch, draw_step
    import contextlib

    components = load_components(tiny_sd15_path)
    pairs = load_pairs(tiny_set, components.resolution)
    unet = components.unet
    base_before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    torch.manual_seed(0)
    params = add_lora(unet, LoraSettings(rank=4, alpha=4))
    lora_before = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    schedule = NoiseSchedule(components.alphas_cumprod, "epsilon", "cpu")
    source = UncachedPairSource(components, pairs, "cpu")
    for step in range(2):
        draws = draw_step(step, 0, 2, len(pairs), (4, 16, 16), schedule.num_train_timesteps, 0.0, "cpu")
        loss, _ = dpo_loss_on_batch(StepModel(unet, unet, schedule, contextlib.nullcontext), source.batch(draws),
                                    draws, DpoObjective(5000.0, "sigmoid"))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(unet.named_parameters())
    assert all(not torch.equal(after[n], lora_before[n]) for n in lora_before if "lora_B" in n)
    for name, value in base_before.items():
        key = name if name in after else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[key], value), name


def test_reference_switch_is_diffusers_disable_adapters(tiny_sd15_path):
    """adapters_disabled (cached layer list) == diffusers' unet.disable_adapters()/enable_adapters(): the
    base model's output and no trainable LoRA inside, the policy's output and trainable LoRA after."""
    from training.config import LoraSettings
    from training.lora import adapters_disabled, add_lora
    from training.models import load_components

    unet = load_components(tiny_sd15_path).unet
    torch.manual_seed(0)
    inputs = (torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.randn(2, 77, 32))
    base = unet(*inputs).sample.detach()
    params = add_lora(unet, LoraSettings(rank=4, alpha=4))
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1)  # B != 0: the policy differs from the base model
    policy = unet(*inputs).sample.detach()
    assert not torch.allclose(policy, base)
    for _ in range(2):  # the second time uses the cached layer list
        with adapters_disabled(unet):
            torch.testing.assert_close(unet(*inputs).sample, base, rtol=0, atol=0)
            assert not any(p.requires_grad for p in params)
        assert all(p.requires_grad for p in params)
        torch.testing.assert_close(unet(*inputs).sample.detach(), policy, rtol=0, atol=0)
    unet.disable_adapters()
    torch.testing.assert_close(unet(*inputs).sample, base, rtol=0, atol=0)
    unet.enable_adapters()


def test_resume_matches_uninterrupted_run(tiny_sd15_path, tiny_set, tmp_path, monkeypatch):
    from training.trainer import Trainer

    # Every process "has run 10 s" at each log: the wall rate then shows which steps it counts.
    monkeypatch.setattr(Trainer, "since_start", lambda self: 10.0)
    common = ("max_train_steps=4", "checkpoint_every=2", "lr_scheduler=linear", "lr_warmup_steps=1")
    full = tmp_path / "full"
    train(tiny_config(tiny_sd15_path, tiny_set, full, *common))
    parted = tmp_path / "parted"
    assert train(tiny_config(tiny_sd15_path, tiny_set, parted, *common), [StopAtStep(2)]) == {"stopped_at": 2}
    assert not (parted / "lora").exists()  # a crashed run leaves no output folder
    summary = train(tiny_config(tiny_sd15_path, tiny_set, parted, *common, "resume=latest"))
    assert summary["resumed_from"].endswith("checkpoint-0000002")
    full_losses, parted_losses = _losses(full), _losses(parted)
    assert sorted(parted_losses) == [1, 2, 3, 4]
    for step in (3, 4):
        assert parted_losses[step] == pytest.approx(full_losses[step], abs=1e-6)
    _assert_same_lora(_lora(full), _lora(parted), atol=1e-6)
    # The resumed process trained steps 3-4 only: its wall rate counts those, not the steps before the resume.
    wall = _losses(parted, "pairs_per_s_wall")
    assert wall[4] == pytest.approx(2 * summary["pairs_per_step"] / 10.0)
    assert _losses(full, "pairs_per_s_wall")[4] == pytest.approx(4 * summary["pairs_per_step"] / 10.0)


def test_accumulation_matches_larger_batch(tiny_sd15_path, tiny_set, tmp_path):
    accumulated = tmp_path / "accum"
    train(tiny_config(tiny_sd15_path, tiny_set, accumulated, "micro_batch_size=2", "gradient_accumulation_steps=2",
                      *EQUIVALENCE))
    single = tmp_path / "single"
    train(tiny_config(tiny_sd15_path, tiny_set, single, "micro_batch_size=4", "gradient_accumulation_steps=1",
                      *EQUIVALENCE))
    _assert_same_run(single, accumulated)


def test_cached_and_uncached_paths_agree(tiny_sd15_path, tiny_set, tmp_path):
    cached, uncached = tmp_path / "cached", tmp_path / "uncached"
    train(tiny_config(tiny_sd15_path, tiny_set, cached, "cache_latents=true", "prompt_dropout=0.3", *EQUIVALENCE))
    train(tiny_config(tiny_sd15_path, tiny_set, uncached, "cache_latents=false", "prompt_dropout=0.3", *EQUIVALENCE))
    assert list((cached / "work" / "cache").glob("*.safetensors"))
    _assert_same_run(cached, uncached)


@pytest.mark.parametrize("loss_type", ["hinge", "ipo", "sft"])
def test_other_loss_types_train(tiny_sd15_path, tiny_set, tmp_path, loss_type):
    summary = train(tiny_config(tiny_sd15_path, tiny_set, tmp_path / loss_type, f"loss_type={loss_type}",
                                "max_train_steps=2"))
    assert math.isfinite(summary["final_metrics"]["loss"])
    assert any(v.abs().sum() > 0 for k, v in _lora(tmp_path / loss_type).items() if "lora_B" in k or "up" in k)


def test_dora_and_merged_unet_export(tiny_sd15_path, tiny_set, tmp_path):
    """DoRA trains and loads in stock diffusers; the merged UNet generates what base + LoRA generates."""
    from diffusers import UNet2DConditionModel

    from core.models import load_pipeline

    run = tmp_path / "dora"
    train(tiny_config(tiny_sd15_path, tiny_set, run, "lora.use_dora=true", "export_merged_unet=true",
                      "max_train_steps=2"))
    assert any("magnitude" in k for k in _lora(run))
    pipe = load_pipeline(tiny_sd15_path)

    def generate():
        return pipe("a photo of a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="np").images

    base = generate()
    pipe.load_lora_weights(str(run / "lora"))
    with_lora = generate()
    assert abs(with_lora - base).max() > 1e-4
    pipe.unload_lora_weights()
    pipe.unet = UNet2DConditionModel.from_pretrained(str(run / "lora" / "unet_merged"))
    assert abs(generate() - with_lora).max() < 1e-4


def test_heldout_accuracy_sign_and_mechanics(tiny_sd15_path, tiny_set, tmp_path):
    """After training, the LoRA prefers the winners of the pairs it was trained on (in-sample)."""
    from training.heldout import heldout_implicit_accuracy

    run = tmp_path / "fit"
    train(tiny_config(tiny_sd15_path, tiny_set, run, "max_train_steps=8", "micro_batch_size=4"))
    result = heldout_implicit_accuracy(tiny_sd15_path, run / "lora", tiny_set, draws=4)
    assert result["pairs"] == 8 and result["draws"] == 4
    assert result["accuracy"] > 0.5


def test_v_prediction_model_trains(tiny_sd15_path, tiny_set, tmp_path):
    """prediction_type=v_prediction trains against v (NoiseSchedule.target, checked against diffusers)."""
    run = tmp_path / "v"
    summary = train(tiny_config(tiny_sd15_path, tiny_set, run, "prediction_type=v_prediction", "max_train_steps=2"))
    assert summary["prediction_type"] == "v_prediction"
    assert _losses(run)[1] == pytest.approx(math.log(2.0), abs=1e-6)
