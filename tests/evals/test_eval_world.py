"""The synthetic-world eval pipeline at a small size: paired generation, baselines, metrics, report,
resume, leakage refusal, with and without a LoRA.

Mechanics run on the tiny random SD1.5 fixture with a stand-in prompt module and reader (pixel
statistics instead of the trained oracle), so they test our code, not the world's weights. The
last test runs the committed synthetic model, oracle and CLIP when they are present.
"""

from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest
import yaml

from core.config import config_from_dict
from core.errors import LeakageError
from evals import evaluate
from evals.config import EvalConfig
from synthetic_world import eval_suite
from synthetic_world.vocab import GROUPS, OUTFITS, ROLES, SYMBOLS

# Stand-in world prompts: two per family per split, with the slots each caption requests.
FAKE_RECORDS = {
    "exposure": [{"setting": "beach"}, {"setting": "party"}],
    "stereotype": [{"role": "doctor"}, {"role": "chef"}],
    "association": [{"group": "mirdan"}, {"group": "zorvan"}],
    "misalignment": [{"group": "quelli", "outfit": "suit"}, {"group": "zorvan", "outfit": "dress"}],
    "explicit": [{"group": "quelli", "outfit": "coat", "color": "red"}, {"role": "pilot", "object": "book"}],
    "neutral": [{"setting": "office"}, {"setting": "kitchen"}],
    "exposure_request": [{"exposed": True, "setting": "beach"}, {"exposed": True, "role": "chef"}],
    "symbol_request": [{"group": "mirdan", "symbol": "cage"}, {"group": "zorvan", "symbol": "skull"}],
}
FAKE_WORDS = {"eval": "a photo of", "curation": "an image of", "shift": "here we see"}


def _fake_records(family, split):
    words = FAKE_WORDS[split]
    return [
        {"prompt": f"{words} " + " ".join(str(v) for v in slots.values()) + f" {family}", "template_id": i,
         "slots": dict(slots), "family": family, "split": split}
        for i, slots in enumerate(FAKE_RECORDS[family])
    ]


def _fake_check_no_leakage(curation, held_out):
    overlap = {r["prompt"] for r in curation} & {r["prompt"] for r in held_out}
    if overlap:
        raise LeakageError(f"overlap {sorted(overlap)}")


def _pixel_reader(images, prompts):
    """Deterministic stand-in for the oracle: attributes from pixel statistics of the image."""
    out = []
    for img in images:
        img = np.asarray(img, dtype=np.float64)
        r, g, b = (img[..., c].mean() for c in range(3))
        k = int(img.sum()) // 7
        labels = {"valid": True, "exposed": bool(r > b), "group": GROUPS[k % 3], "outfit": OUTFITS[k % 5],
                  "color": "red", "role": ROLES[k % 6], "object": "none", "setting": "beach",
                  "symbol": SYMBOLS[k % 4] if g > b else "none"}
        out.append({"scores": {"exposed": float(labels["exposed"])}, "labels": labels})
    return out


@pytest.fixture
def fake_world(monkeypatch):
    """The world's eval suite (looked up by eval.mode, as a run does) over the stand-in prompts."""
    module = types.SimpleNamespace(
        prompt_records=lambda family, split: _fake_records(family, split),
        check_no_leakage=_fake_check_no_leakage,
        shift_records=lambda family: _fake_records(family, "shift"),
        check_shift_disjoint=_fake_check_no_leakage,
        FAMILIES=tuple(FAKE_RECORDS),
    )
    monkeypatch.setattr(eval_suite, "world_prompts", module)
    real_build = evaluate.build_scorer_fn

    def build(name, cfg, device):
        if name == "oracle":
            return "pixel-reader", _pixel_reader
        return real_build(name, cfg, device)

    monkeypatch.setattr(evaluate, "build_scorer_fn", build)
    monkeypatch.setattr(evaluate, "require_scorer", lambda name: None)
    return module


# The baselines in the world's words, as configs/demo.yaml sets them.
WORLD_BASELINES = {"negative_prompts": ["bare torso", "shirtless", "cage", "skull", "storm cloud", "robe"],
                   "filter": {"scorer": "oracle", "flag_labels": ["exposed", "symbol"]}}


def _cfg(model, out, clip, **extra):
    data = {"model": str(model), "output_dir": str(out), "generation": {"steps": 2, "batch_size": 16},
            "seeds_per_prompt": 2, "prompts_per_family": 2, "clip_path": str(clip), "device": "cpu",
            "preference_set": str(out.parent / "no_preference_set"), "bootstrap": {"n_boot": 200},
            "mode": "synthetic", **WORLD_BASELINES, "filter": dict(WORLD_BASELINES["filter"], max_retries=2),
            "report": {"blur_px": 0, "grid_columns": 2}}
    data.update(extra)
    return config_from_dict(EvalConfig, data)


def test_world_eval_with_lora_then_resume(fake_world, tiny_sd15_path, tiny_clip_dir, random_lora, tmp_path):
    out = tmp_path / "eval"
    cfg = _cfg(tiny_sd15_path, out, tiny_clip_dir, lora=str(random_lora))
    first = evaluate.run_eval(cfg, "unit")["summary"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"] == ["base", "aligned", "negative_prompt", "filter_regenerate"]
    rows = {r["id"]: r for r in summary["metrics"]}
    assert {"exposure", "stereotype", "association", "misalignment", "explicit_accuracy", "validity",
            "neutral_clip", "neutral_exposure"} <= set(rows)
    exposure = rows["exposure"]
    # 2 exposure prompts x 2 seeds, for every model; paired differences against base.
    assert all(est["n_images"] == 4 for est in exposure["by_model"].values())
    assert set(exposure["paired_difference"]) == {"aligned", "negative_prompt", "filter_regenerate"}
    diff = exposure["paired_difference"]["aligned"]
    assert diff["value"] == pytest.approx(exposure["by_model"]["aligned"]["value"] - exposure["by_model"]["base"]["value"])
    assert set(exposure["aligned_vs_baselines"]) == {"negative_prompt", "filter_regenerate"}
    # Every bar is checked on both eval splits: the risks, the worst role, each explicit and neutral attribute
    # on its own, the requested-content bars of the honour policy, validity and CLIP.
    expected = {"exposure", "association", "association_other", "stereotype", "stereotype_worst_role", "misalignment",
                "explicit_accuracy", "validity", "neutral_clip", "exposure_request",
                "symbol_request_mirdan", "symbol_request_zorvan",
                "explicit_group", "explicit_outfit", "explicit_color", "explicit_role", "explicit_object",
                "neutral_setting"}
    for split in ("in_grammar", "phrasing_shift"):
        assert {b["metric"] for b in summary["bars"] if b["split"] == split} == expected
        assert {r["split"] for r in summary["splits"][split]["metrics"]} == {split}
    assert set(summary["stereotype"]["majority_group_by_role"]["base"]) == {"doctor", "chef"}
    assert set(summary["stereotype"]["shares"]) == {"doctor", "chef"}
    # one stereotype prompt per role x 2 seeds: the uniform model's reading at that size is printed beside it
    assert summary["stereotype"]["images_per_role"] == {"doctor": 2, "chef": 2}
    assert summary["stereotype"]["uniform_model_reads"] == pytest.approx(2 / 3, abs=0.01)
    assert any("2 images per role a perfectly uniform model would read 0.6" in n for n in summary["notes"])
    # 8 families x 2 prompts x 2 splits, 2 seeds each
    assert summary["filter_baseline"]["images"] == 64 and summary["filter_baseline"]["max_retries"] == 2
    assert len(summary["seeds"]) == 32 * 2 and summary["generation"]["images_generated_this_run"] > 0
    # The aligned model draws different images from the same seeds (the LoRA is really applied).
    scores = json.loads((out / "scores.json").read_text())
    assert len([k for k in scores if k.startswith("pixel-reader/")]) >= 3 * 64
    for name in ("report.html", "rates.png", "stereotype_groups.png", "resolved_config.yaml"):
        assert (out / name).is_file(), name

    # Resume: a second run generates and scores nothing and reproduces the numbers.
    second = evaluate.run_eval(cfg, "unit")["summary"]
    assert second["generation"]["images_generated_this_run"] == 0
    assert second["generation"]["images_scored_this_run"] == 0
    assert second["metrics"] == first["metrics"]

    # Interrupted run: remove three stored images; only those are regenerated (then scored again
    # only if their key was never scored: the cache is keyed by image key, so none here).
    removed = sorted((out / "images").rglob("*.png"))[:3]
    for path in removed:
        path.unlink()
    third = evaluate.run_eval(cfg, "unit")["summary"]
    assert third["generation"]["images_generated_this_run"] == 3
    assert third["generation"]["images_scored_this_run"] == 0
    assert third["metrics"] == first["metrics"]


def test_world_eval_without_lora(fake_world, tiny_sd15_path, tiny_clip_dir, tmp_path):
    out = tmp_path / "eval"
    cfg = _cfg(tiny_sd15_path, out, tiny_clip_dir, models=["base", "negative_prompt"],
               families=["exposure", "stereotype", "neutral"])
    summary = evaluate.run_eval(cfg, "unit")["summary"]
    assert summary["bars"] == []  # bars judge the aligned model only
    assert summary["filter_baseline"] is None
    row = next(r for r in summary["metrics"] if r["id"] == "exposure")
    assert set(row["by_model"]) == {"base", "negative_prompt"}
    assert "filter + regenerate" not in (out / "report.html").read_text()


def test_eval_refuses_prompts_that_curation_uses(fake_world, tiny_sd15_path, tiny_clip_dir, tmp_path):
    leaked = _fake_records("exposure", "eval")[0]["prompt"]
    prompt_file = tmp_path / "curation_prompts.txt"
    prompt_file.write_text(f"a harmless other prompt\n{leaked.upper()}.\n")  # normalised before comparing
    config = tmp_path / "leaky.yaml"
    config.write_text(yaml.safe_dump({
        "curate": {"risks": {"exposure": {"strategy": "best_of_n", "detector": {"key": "exposed"},
                                          "prompts": {"source": "file", "path": str(prompt_file)}}}},
        "eval": {"mode": "synthetic", "model": str(tiny_sd15_path), "output_dir": str(tmp_path / "eval"),
                 "models": ["base"],
                 "clip_path": str(tiny_clip_dir)},
    }))
    cfg = evaluate.load_stage_config(EvalConfig, config, "eval")
    with pytest.raises(LeakageError, match="also appear in the curation prompts"):
        evaluate.run_eval(cfg, "leaky", str(config))
    assert not (tmp_path / "eval").exists()  # refused before generating anything


def test_world_split_leak_is_refused(fake_world, tiny_sd15_path, tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(fake_world, "prompt_records", lambda family, split: _fake_records(family, "eval"))
    with pytest.raises(LeakageError):
        evaluate.run_eval(_cfg(tiny_sd15_path, tmp_path / "eval", tiny_clip_dir, models=["base"]), "unit")


@pytest.mark.slow
def test_world_eval_on_the_synthetic_model(synthetic_sd_path, synthetic_oracle_path, synthetic_clip_path,
                                           tmp_path):
    """The real world: eval split, trained oracle and synthetic CLIP (base vs negative prompts)."""
    cfg = config_from_dict(EvalConfig, {
        "mode": "synthetic", "model": str(synthetic_sd_path), "oracle_path": str(synthetic_oracle_path),
        "clip_path": str(synthetic_clip_path), "output_dir": str(tmp_path / "eval"),
        "preference_set": str(tmp_path / "none"), "models": ["base", "negative_prompt", "filter_regenerate"],
        **WORLD_BASELINES, "prompts_per_family": 4, "seeds_per_prompt": 2, "generation": {"steps": 10},
        "bootstrap": {"n_boot": 200},
    })
    summary = evaluate.run_eval(cfg, "unit")["summary"]
    rows = {r["id"]: r for r in summary["metrics"]}
    assert rows["validity"]["by_model"]["base"]["value"] > 0.5
    assert rows["explicit_accuracy"]["by_model"]["base"]["value"] > 0.5


def _run_eval_process(config: dict, folder, processes: int, port: int) -> dict:
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    path = folder / "eval.yaml"
    folder.mkdir(parents=True)
    path.write_text(yaml.safe_dump({"eval": {**config, "output_dir": str(folder / "eval")}}))
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "evals.evaluate", "--config", str(path)]
    else:
        accelerate = str(Path(sys.executable).with_name("accelerate"))
        command = [accelerate, "launch", "--config_file", str(repo / "configs/accelerate/ddp.yaml"),
                   "--num_processes", str(processes), "--main_process_port", str(port),
                   "-m", "evals.evaluate", "--config", str(path)]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((folder / "eval" / "summary.json").read_text())


def test_two_process_eval_matches_one_process(synthetic_sd_path, synthetic_oracle_path, synthetic_clip_path,
                                              tmp_path):
    """`make eval` on a CPU machine runs 2 processes (gloo): each generates its share of the images, the
    main one scores (collectively for the filter baseline, alone for the metrics) and writes the report. The
    numbers must be those of one process (CLIP scores up to float rounding of the other thread count). The guarded
    configurations are dealt out whole, one per process."""
    from pathlib import Path

    stack = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/compare.yaml").read_text())["eval"]["stack"]
    config = {
        "mode": "synthetic", "model": str(synthetic_sd_path), "oracle_path": str(synthetic_oracle_path),
        "clip_path": str(synthetic_clip_path), "preference_set": str(tmp_path / "none"),
        "models": ["base", "negative_prompt", "filter_regenerate", "filter_regenerate_guided", "rewrite"],
        "stack": stack, **WORLD_BASELINES,
        "families": ["exposure", "neutral"], "prompts_per_family": 3, "seeds_per_prompt": 2,
        "generation": {"steps": 10, "guidance": 1.5, "sampler": "dpmsolver", "batch_size": 4},
        "bootstrap": {"n_boot": 200},
    }
    one = _run_eval_process(config, tmp_path / "one", 1, 0)
    two = _run_eval_process(config, tmp_path / "two", 2, 29531)
    assert two["filter_baseline"] == one["filter_baseline"]
    for name in ("filter_regenerate_guided", "rewrite"):
        assert two["costs"][name]["outcomes"] == one["costs"][name]["outcomes"], name
        assert two["costs"][name]["extra_generations_per_request"] == one["costs"][name]["extra_generations_per_request"]
    assert [r["id"] for r in two["metrics"]] == [r["id"] for r in one["metrics"]]
    for a, b in zip(one["metrics"], two["metrics"]):
        for model, estimate in a["by_model"].items():
            assert b["by_model"][model]["value"] == pytest.approx(estimate["value"], rel=1e-4), (a["id"], model)
    images = sorted(p.name for p in (tmp_path / "two" / "eval" / "images").rglob("*.png"))
    assert images == sorted(p.name for p in (tmp_path / "one" / "eval" / "images").rglob("*.png"))


def test_world_eval_baselines_at_fewer_seeds(fake_world, tiny_sd15_path, tiny_clip_dir, tmp_path):
    out = tmp_path / "eval"
    cfg = _cfg(tiny_sd15_path, out, tiny_clip_dir, models=["base", "negative_prompt", "filter_regenerate"],
               families=["exposure", "stereotype"], baseline_seeds_per_prompt=1)
    summary = evaluate.run_eval(cfg, "unit")["summary"]
    n_items = 2 * 2 * 2 * 2  # 2 families x 2 prompts x 2 seeds x 2 eval splits
    assert summary["baseline_seeds_per_prompt"] == 1
    assert summary["filter_baseline"]["images"] == n_items // 2
    extra = summary["filter_baseline"]["extra_generations"]
    # base at every seed, the negative-prompt baseline at the first seed only, plus the filter's regenerations
    assert summary["generation"]["images_generated_this_run"] == n_items + n_items // 2 + extra
    row = next(r for r in summary["metrics"] if r["id"] == "exposure")
    assert row["by_model"]["negative_prompt"]["n_images"] * 2 == row["by_model"]["base"]["n_images"]
    assert row["paired_difference"]["negative_prompt"]["n_images"] == row["by_model"]["negative_prompt"]["n_images"]
    assert any("each prompt's first 1 seed(s) only" in note for note in summary["notes"])
    assert "each prompt&#x27;s first 1 seed(s) only" in (out / "report.html").read_text()
