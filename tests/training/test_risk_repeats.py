"""Per-risk settings: sampling (train.risk_repeats: which pairs an epoch visits), label smoothing
(train.label_smoothing_per_risk), timestep ranges (train.timestep_range_per_risk), and their bad settings."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tests.training.test_bad_input import _nothing_written, _run
from training.step import draw_step, risk_sampling_order, timestep_bounds


def test_sampling_order_repeats_and_drops_by_risk():
    risks = ["exposure", "stereotype", "exposure", "association"]
    order = risk_sampling_order(risks, {"stereotype": 3, "association": 0})
    assert order.tolist() == [0, 1, 1, 1, 2]


def test_sampling_order_default_is_each_pair_once():
    assert risk_sampling_order(["a", "b", "c"], {}).tolist() == [0, 1, 2]


def test_epoch_visits_follow_repeats():
    """Over whole epochs every pair is visited exactly repeats times per epoch, whatever the window size."""
    risks = ["exposure"] * 5 + ["stereotype"] * 3
    order = risk_sampling_order(risks, {"stereotype": 2})  # 5 + 6 = 11 visits per epoch
    visits = Counter()
    for step in range(11):  # 11 steps x 4 pairs = 4 epochs
        draws = draw_step(step, seed=3, pairs_per_step=4, num_pairs=len(risks), latent_shape=(4, 2, 2),
                          num_train_timesteps=1000, prompt_dropout=0.0, device="cpu", order=order)
        visits.update(draws.cpu_indices.tolist())
    assert all(visits[i] == 4 for i in range(5)) and all(visits[i] == 8 for i in range(5, 8))


def test_no_order_matches_previous_draws():
    """order=None keeps the draws of runs made before risk_repeats existed (resume compatibility)."""
    a = draw_step(7, 0, 4, 10, (4, 2, 2), 1000, 0.0, "cpu")
    b = draw_step(7, 0, 4, 10, (4, 2, 2), 1000, 0.0, "cpu", order=torch.arange(10))
    assert torch.equal(a.cpu_indices, b.cpu_indices) and torch.equal(a.noise, b.noise)


@pytest.mark.parametrize("override, fragments", [
    ("risk_repeats.stereotyp=2", ["stereotyp", "exposure"]),  # names the risks the set holds
    ("risk_repeats.exposure=0", ["no pair"]),  # leaves nothing to train on
    ("risk_repeats.exposure=-1", ["risk_repeats.exposure"]),
    ("label_smoothing_per_risk.stereotyp=0.1", ["stereotyp", "exposure"]),
    ("label_smoothing_per_risk.exposure=0.5", ["label_smoothing_per_risk.exposure", "[0, 0.5)"]),
    ("label_smoothing=-0.1", ["label_smoothing", "[0, 0.5)"]),
    ("rpo_alpha_per_risk.stereotyp=0.1", ["stereotyp", "exposure"]),
    ("rpo_alpha=-0.1", ["rpo_alpha", ">= 0"]),
    ("rpo_alpha=0.1 loss_type=sft", ["rpo_alpha", "sft"]),
    ("rpo_rejected_share=0.3", ["rpo_rejected_share", "rpo_alpha"]),  # no RPO term to shape
    ("rpo_alpha_per_risk.exposure=0.2 rpo_rejected_share_per_risk.stereotype=0.3", ["rpo_rejected_share_per_risk.stereotype", "α"]),
    ("rpo_alpha=0.2 rpo_rejected_share=1.0", ["rpo_rejected_share", "[0, 1)"]),
    ("rpo_alpha=0.2 rpo_rejected_share_per_risk.stereotyp=0.3", ["stereotyp", "exposure"]),
    ("timestep_range_per_risk.stereotyp=[400,1000]", ["stereotyp", "exposure"]),
    ("timestep_range_per_risk.exposure=[500,400]", ["timestep_range_per_risk.exposure", "low < high"]),
    ("timestep_range_per_risk.exposure=[400]", ["timestep_range_per_risk.exposure"]),
    ("timestep_range_per_risk.exposure=[0.5,1000]", ["timestep_range_per_risk.exposure", "integer"]),
])
def test_bad_risk_repeats_are_clear_errors(override, fragments, tiny_sd15_path, tiny_set, tmp_path, capsys):
    assert _run(tmp_path, tiny_sd15_path, tiny_set, *override.split()) == 2
    err = capsys.readouterr().err
    assert all(fragment in err for fragment in fragments)
    _nothing_written(tmp_path)


def test_per_risk_options_map_each_pair():
    from types import SimpleNamespace

    from training.config import TrainConfig
    from training.train import _per_pair_options

    pairs = SimpleNamespace(risks=lambda: ["exposure", "stereotype", "exposure"])
    cfg = TrainConfig(data="set", label_smoothing=0.05, label_smoothing_per_risk={"stereotype": 0.2})
    assert set(_per_pair_options(cfg, pairs)) == {"label_smoothing"}
    assert _per_pair_options(cfg, pairs)["label_smoothing"].tolist() == pytest.approx([0.05, 0.2, 0.05])
    cfg = TrainConfig(data="set", rpo_alpha_per_risk={"stereotype": 0.3})
    assert set(_per_pair_options(cfg, pairs)) == {"rpo_alpha"}
    assert _per_pair_options(cfg, pairs)["rpo_alpha"].tolist() == pytest.approx([0.0, 0.3, 0.0])
    cfg = TrainConfig(data="set", rpo_alpha_per_risk={"stereotype": 0.3}, rpo_rejected_share_per_risk={"stereotype": 1 / 3})
    assert set(_per_pair_options(cfg, pairs)) == {"rpo_alpha", "rpo_rejected_share"}
    assert _per_pair_options(cfg, pairs)["rpo_rejected_share"].tolist() == pytest.approx([0.0, 1 / 3, 0.0])
    assert _per_pair_options(TrainConfig(data="set"), pairs) == {}  # plain DPO: the loss is unchanged


def test_label_smoothing_reaches_the_training_loss(tiny_sd15_path, tiny_set, tmp_path):
    """Same run with and without ε: identical draws and initial weights, so the first step's loss
    differs only by the smoothing term (at θ = ref every margin is 0 and both losses are log 2)."""
    import json

    losses = {}
    for eps in ("0.0", "0.3"):
        folder = tmp_path / eps
        assert _run(folder, tiny_sd15_path, tiny_set, f"label_smoothing={eps}", "log_every=1", "max_train_steps=3") == 0
        lines = (folder / "out" / "metrics.jsonl").read_text().splitlines()
        losses[eps] = [json.loads(line)["loss"] for line in lines]
    assert losses["0.0"][0] == pytest.approx(losses["0.3"][0], rel=1e-6)  # step 1: margins are all 0
    assert losses["0.0"][-1] != pytest.approx(losses["0.3"][-1], rel=1e-6)


def test_rpo_reaches_the_training_loss(tiny_sd15_path, tiny_set, tmp_path):
    """Same run with and without α: step 1 (θ = ref) has the same loss, later steps do not, and the
    RPO term is logged."""
    import json

    logs = {}
    for alpha in ("0.0", "0.5"):
        folder = tmp_path / alpha
        assert _run(folder, tiny_sd15_path, tiny_set, f"rpo_alpha={alpha}", "log_every=1", "max_train_steps=3") == 0
        logs[alpha] = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
    assert logs["0.0"][0]["loss"] == pytest.approx(logs["0.5"][0]["loss"], rel=1e-6)
    assert logs["0.0"][-1]["loss"] != pytest.approx(logs["0.5"][-1]["loss"], rel=1e-6)
    assert "loss/rpo" in logs["0.5"][-1] and "loss/rpo" not in logs["0.0"][-1]


def test_timestep_ranges_apply_per_pair_and_leave_the_other_draws_alone():
    """Ranged pairs draw t uniformly in [low, high); every other pair, the noise and the indices are those of
    a run without ranges (so adding a range to one risk changes nothing else)."""
    risks = ["exposure", "stereotype"] * 8
    bounds = timestep_bounds([(400, 1000) if r == "stereotype" else None for r in risks])
    seen = []
    for step in range(200):
        plain = draw_step(step, 5, 8, len(risks), (4, 2, 2), 1000, 0.1, "cpu")
        ranged = draw_step(step, 5, 8, len(risks), (4, 2, 2), 1000, 0.1, "cpu", bounds=bounds)
        assert torch.equal(plain.cpu_indices, ranged.cpu_indices) and torch.equal(plain.noise, ranged.noise)
        assert torch.equal(plain.drop_prompt, ranged.drop_prompt)
        is_stereo = torch.tensor([risks[i] == "stereotype" for i in plain.cpu_indices.tolist()])
        assert torch.equal(plain.timesteps[~is_stereo], ranged.timesteps[~is_stereo])
        seen += ranged.timesteps[is_stereo].tolist()
    assert min(seen) >= 400 and max(seen) <= 999
    # uniform over [400, 1000): 800 draws; mean 699.5 (sd of the mean ≈ 6), both halves hit
    assert abs(sum(seen) / len(seen) - 699.5) < 25
    assert sum(t < 700 for t in seen) > 0.4 * len(seen) and sum(t >= 700 for t in seen) > 0.4 * len(seen)


def test_timestep_bounds_none_without_ranges():
    assert timestep_bounds([None, None]) is None


def test_timestep_range_past_the_schedule_is_a_clear_error(tiny_sd15_path, tiny_set, tmp_path, capsys):
    assert _run(tmp_path, tiny_sd15_path, tiny_set, "timestep_range_per_risk.exposure=[0,5000]") == 2
    assert "goes past the model's 1000 training timesteps" in capsys.readouterr().err


def test_timestep_range_reaches_training(tiny_sd15_path, tiny_set, tmp_path):
    """A range changes what is trained (the pairs see other timesteps), and a checkpoint of a run without one
    does not resume into a run with one (the digest includes a non-default range)."""
    import dataclasses

    from tests.training.conftest import tiny_config
    from training.train import config_digest, train

    losses = {}
    for name, extra in (("full", ()), ("ranged", ("timestep_range_per_risk.exposure=[900,1000]",))):
        run = tmp_path / name
        train(tiny_config(tiny_sd15_path, tiny_set, run, *extra))
        from training.metrics import read_metrics
        losses[name] = [r["loss"] for r in read_metrics(run / "lora" / "metrics.jsonl")]
    assert losses["full"] != losses["ranged"]
    cfg = tiny_config(tiny_sd15_path, tiny_set, tmp_path / "x")
    assert config_digest(cfg) != config_digest(dataclasses.replace(cfg, timestep_range_per_risk={"exposure": [0, 500]}))
    assert config_digest(cfg) == config_digest(dataclasses.replace(cfg, timestep_range_per_risk={}))
