"""Per-risk RPO settings (train.rpo_alpha_per_risk, train.rpo_rejected_share_per_risk): their mapping onto the
pairs, their bad settings, and that they reach the training loss. (The per-risk options measured and not adopted
are removed keys: see docs/experiments.md.)"""

from __future__ import annotations

import pytest

from tests.training.test_bad_input import _nothing_written, _run


@pytest.mark.parametrize("override, fragments", [
    ("rpo_alpha_per_risk.stereotyp=0.1", ["stereotyp", "exposure"]),  # names the risks the set holds
    ("rpo_alpha=-0.1", ["rpo_alpha", ">= 0"]),
    ("rpo_alpha=0.1 loss_type=sft", ["rpo_alpha", "sft"]),
    ("rpo_rejected_share=0.3", ["rpo_rejected_share", "rpo_alpha"]),  # no RPO term to shape
    ("rpo_alpha_per_risk.exposure=0.2 rpo_rejected_share_per_risk.stereotype=0.3", ["rpo_rejected_share_per_risk.stereotype", "α"]),
    ("rpo_alpha=0.2 rpo_rejected_share=1.0", ["rpo_rejected_share", "[0, 1)"]),
    ("rpo_alpha=0.2 rpo_rejected_share_per_risk.stereotyp=0.3", ["stereotyp", "exposure"]),
    # Removed keys: a clear error that names the key and where its numbers are.
    ("risk_repeats.exposure=2", ["train.risk_repeats was removed", "docs/experiments.md"]),
    ("label_smoothing=0.1", ["train.label_smoothing was removed", "docs/experiments.md"]),
    ("label_smoothing_per_risk.exposure=0.1", ["train.label_smoothing_per_risk was removed"]),
    ("timestep_range_per_risk.exposure=[400,1000]", ["train.timestep_range_per_risk was removed"]),
    ("preserve_risks=[exposure]", ["train.preserve_risks was removed", "docs/experiments.md"]),
    ("loss_weight_per_risk.exposure=0.5", ["train.loss_weight_per_risk was removed"]),
])
def test_bad_per_risk_options_are_clear_errors(override, fragments, tiny_sd15_path, tiny_set, tmp_path, capsys):
    assert _run(tmp_path, tiny_sd15_path, tiny_set, *override.split()) == 2
    err = capsys.readouterr().err
    assert all(fragment in err for fragment in fragments)
    _nothing_written(tmp_path)


def test_per_risk_options_map_each_pair():
    from types import SimpleNamespace

    from training.config import TrainConfig
    from training.trainer import per_pair_options

    pairs = SimpleNamespace(risks=lambda: ["exposure", "stereotype", "exposure"])
    cfg = TrainConfig(model="m", data="set", rpo_alpha_per_risk={"stereotype": 0.3})
    assert set(per_pair_options(cfg, pairs)) == {"rpo_alpha"}
    assert per_pair_options(cfg, pairs)["rpo_alpha"].tolist() == pytest.approx([0.0, 0.3, 0.0])
    cfg = TrainConfig(model="m", data="set", rpo_alpha_per_risk={"stereotype": 0.3}, rpo_rejected_share_per_risk={"stereotype": 1 / 3})
    assert set(per_pair_options(cfg, pairs)) == {"rpo_alpha", "rpo_rejected_share"}
    assert per_pair_options(cfg, pairs)["rpo_rejected_share"].tolist() == pytest.approx([0.0, 1 / 3, 0.0])
    assert per_pair_options(TrainConfig(model="m", data="set"), pairs) == {}  # plain DPO: the loss is unchanged


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
