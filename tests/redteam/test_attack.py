"""make redteam end to end on the tiny random SD1.5 model with a test suite (tests/redteam/fakes.py): every attack
runs, the budget is kept, nothing found asks for its risk or is held out, the outputs are complete, the report
escapes prompts, bad configs exit 2."""

from __future__ import annotations

import json

import pytest
import yaml

from core.output_dir import MARKER
from inference.generation import GenerationSpec
from redteam.attack import Target, load_config, main, redteam, target_seeds
from redteam.config import RedteamConfig
from tests.conftest import make_random_lora
from tests.redteam import fakes


def _config(tmp_path, model, lora=None, **redteam_overrides):
    filter_file = tmp_path / "filter.yaml"
    filter_file.write_text(yaml.safe_dump({"prompt_filter": {"blocklist": {"nudity": ["nude"]}}}))
    models = {"base": {}, "later": {"lora": str(tmp_path / "not-trained"), "optional": True}}
    if lora:
        models["tuned"] = {"lora": str(lora), "attacks": ["search", "embedding"]}
    section = {
        "model": str(model), "suite": fakes.SUITE, "models": models, "targets_per_risk": 3, "confirm_seeds": 1,
        "generation": {"sampler": "ddim", "steps": 2, "guidance": 1.5, "batch_size": 8},
        # 5 candidates at the default 2 seeds per target; the phrases screened on the model attacked last
        "search": {"budget": 10, "children": 2, "screening_model": "tuned" if lora else None},
        "embedding": {"targets": 1, "tokens": 2, "steps": 2},
        "filter_attack": {"filter": str(filter_file), "targets": 2,
                          "variants": [["leetspeak"], ["zero_width"], ["spacing"]]},
        "device": "cpu", "output_dir": str(tmp_path / "out"),
    }
    section.update(redteam_overrides)
    path = tmp_path / "rt.yaml"
    path.write_text(yaml.safe_dump({"redteam": section}))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_sd15_path):
    tmp = tmp_path_factory.mktemp("redteam")
    lora = make_random_lora(tiny_sd15_path, tmp / "lora")
    path = _config(tmp, tiny_sd15_path, lora)
    cfg = load_config(str(path), [])
    summary = redteam(cfg, str(path), progress=False)
    return cfg, summary, tmp / "out"


def test_every_model_and_attack_has_a_row_with_an_interval(run):
    cfg, summary, out = run
    assert summary["models"] == ["base", "tuned"]
    assert summary["skipped_models"][0]["model"] == "later"  # optional and missing: skipped, said so
    cells = {(r["model"], r["attack"]) for r in summary["rows"]}
    none = [r for r in summary["rows"] if r["attack"] == "none"]
    # no target prompt holds "beach": the plain rate is 0, what the search breaks it breaks by editing
    assert all(r["successes"] == 0 for r in none)
    # the tuned model runs only the attacks its entry names: no filter row
    assert cells == {(m, a) for m in ("base", "tuned") for a in ("none", "search", "embedding", "projected", "filter")
                     if (m, a) != ("tuned", "filter")}
    for row in summary["rows"]:
        low, high = row["ci"]
        assert 0 <= low <= row["asr"] <= high <= 1 and row["targets"] > 0


def test_the_search_breaks_every_target_within_budget(run):
    cfg, summary, out = run
    search = [r for r in summary["rows"] if r["attack"] == "search"]
    assert all(r["asr"] == 1.0 for r in search)  # "at the beach" is in the vocabulary
    records = [json.loads(line) for line in (out / "attacks.jsonl").read_text().splitlines()]
    for record in (r for r in records if r["attack"] == "search"):
        # every candidate, the target's own prompt included, is generated at both of the target's seeds
        assert record["images_used"] <= cfg.search.budget and record["images_used"] % 2 == 0
        assert len(record["seeds"]) == cfg.seeds_per_target == 2
        assert "beach" in record["prompt"] and "nude" not in record["prompt"]
    # screening: one image per vocabulary phrase and probe (two by default), on the screening model only, which
    # runs first although listed last
    screening = {r["model"]: (r["budget"]["screening_images"], r["budget"]["screened_on"]) for r in search}
    assert screening == {"tuned": (2 * 6, "tuned"), "base": (0, "tuned")}
    assert [r["model"] for r in summary["rows"]][0] == "tuned"


class SeedReader:
    """Reads the image (here: its seed): the risk shows at odd seeds."""

    def score(self, images, prompts=None):
        return [{"labels": {"beach": image % 2 == 1, "valid": True}} for image in images]


def test_a_candidate_is_broken_when_the_images_at_any_of_its_seeds_show_the_risk():
    target = Target.__new__(Target)  # no pipeline: an "image" is its seed
    target.suite, target.reader, target.risk, target.per, target.images = fakes.FakeSuite(), SeedReader(), "beach", 2, 0
    target.spec = lambda prompt, seed: GenerationSpec(prompt=prompt, seed=seed, steps=1, guidance=1.0, height=8,
                                                      width=8)
    target.generate = lambda specs: [spec.seed for spec in specs]
    # seed groups of 2 (a risk judged over 2 images): (2, 4) none, (6, 7) one of two, (9, 11) both
    (score, success, images), (score_b, success_b, _) = target.evaluate([("p", [2, 4, 6, 7, 9, 11]), ("q", [6, 7])])
    assert success and score == 1.0 and images[:2] == [9, 11] and sorted(images) == [2, 4, 6, 7, 9, 11]
    assert not success_b and score_b == 0.5
    # a target's first seed group does not depend on how many seeds it has
    cfg = RedteamConfig(model="unused", suite=fakes.SUITE)
    assert target_seeds(cfg, "beach", 0, 2, groups=3)[:2] == target_seeds(cfg, "beach", 0, 2)


def test_found_prompts_never_request_the_risk_and_never_leak(run):
    cfg, summary, out = run
    lines = [line for line in (out / "found_prompts.txt").read_text().splitlines() if not line.startswith("#")]
    assert lines and len(lines) == len(set(lines)) == summary["found_prompts"]["kept"]
    suite = fakes.FakeSuite()
    assert not any(suite.requests_risk("beach", p) for p in lines)
    assert not any(suite.held_out(p) for p in lines)
    meta = json.loads((out / "found_prompts.json").read_text())
    assert meta["suite"] == fakes.SUITE and meta["count"] == len(lines)


def test_filter_attack_counts_what_passes_the_filter(run):
    cfg, summary, out = run
    row = next(r for r in summary["rows"] if r["attack"] == "filter")
    # the blocklist normalises leetspeak, invisible characters and spacing: nothing passes, nothing is broken
    assert row["filter_pass_rate"] == 0.0 and row["successes"] == 0 and row["images_generated"] == 0


def test_the_output_folder_is_complete_and_the_report_escapes_prompts(run):
    cfg, summary, out = run
    for name in ("summary.json", "attacks.jsonl", "found_prompts.txt", "found_prompts.jsonl", "report.md",
                 "report.html", "resolved_config.yaml", MARKER):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert "<img" in html and "<b>dog</b>" not in html and "http" not in html.split("Content-Security-Policy")[1]
    assert "&lt;b&gt;dog&lt;/b&gt;" in html
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["search"]["budget"] == 10


def test_embedding_attack_reports_both_the_embedding_and_its_projection(run):
    cfg, summary, out = run
    records = [json.loads(line) for line in (out / "attacks.jsonl").read_text().splitlines()]
    emb = [r for r in records if r["attack"] == "embedding"]
    assert len(emb) == 2  # one target, two models
    for record in emb:
        # two adversarial tokens in front of the target, none of them a forbidden word
        words = record["projected_prompt"].split(" ")
        assert " ".join(words[2:]) == record["target"] and "nude" not in words[:2]
        assert record["detector_end"] != record["detector_start"]


def test_bad_configs_exit_2_with_a_message(tmp_path, tiny_sd15_path, capsys):
    path = _config(tmp_path, tiny_sd15_path)
    assert main(["--config", str(path), "risks=[nope]"]) == 2
    assert "unknown risk" in capsys.readouterr().err
    assert main(["--config", str(path), "search.budget=0"]) == 2
    assert main(["--config", str(path), "suite=not_a_suite"]) == 2
    assert "redteam_test" in capsys.readouterr().err  # lists the registered suites
    assert main(["--config", str(path), "models.tuned.lora=/nowhere"]) == 2
    assert main(["--config", str(path), "models.base.attacks=[nope]"]) == 2
    assert main(["--config", str(path), "search.screening_model=nope"]) == 2
    assert main(["--config", str(path), "only_models=[nope]"]) == 2
    assert main(["--config", str(path), "search.screening_model=later"]) == 2  # optional: may not run
    assert main(["--config", str(path), "models.base.risks=[nope]"]) == 2
    assert "unknown risk" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    assert main(["--config", str(path)]) == 2  # an output folder this project did not write


def test_only_models_attacks_just_those(tmp_path, tiny_sd15_path):
    path = _config(tmp_path, tiny_sd15_path, only_models=["base"], embedding={"enabled": False},
                   filter_attack={"enabled": False})
    summary = redteam(load_config(str(path), []), str(path), progress=False)
    # "later" is neither attacked nor listed as skipped: this run leaves it out
    assert summary["models"] == ["base"] and not summary["skipped_models"]
    assert {r["model"] for r in summary["rows"]} == {"base"}


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for key in ("--search.budget", "--embedding.steps", "--filter_attack.variants", "--published.sets",
                "--finetune.steps", "--targets_per_risk", "--seeds_per_target"):
        assert key in text


def test_every_config_field_has_help():
    from core.cli import config_key_docs
    from redteam.config import RedteamConfig

    missing = [doc.key for doc in config_key_docs(RedteamConfig) if len(doc.help) < 8]
    assert not missing


@pytest.mark.parametrize("name", ["redteam.yaml", "redteam_round.yaml", "redteam_finetune.yaml",
                                  "redteam_aligned.yaml"])
def test_the_shipped_configs_load(name):
    from pathlib import Path

    from core.config import load_stage_config, read_yaml
    from data_curation.config import CurateConfig
    from redteam.config import RedteamConfig
    from training.config import TrainConfig

    path = Path(__file__).resolve().parents[2] / "configs" / name
    classes = {"redteam": RedteamConfig, "curate": CurateConfig, "train": TrainConfig}
    for section in set(read_yaml(path)) & set(classes):
        load_stage_config(classes[section], path, section, validate=False)
