"""Measuring a prompt filter (mitigations.filter_eval): rates per split, variant and mode, and the summary."""

from __future__ import annotations

import pytest

from core.config import config_from_dict
from core.errors import ConfigError, DataError
from mitigations.filter import PromptFilter, PromptFilterConfig
from mitigations.filter_eval import CLEAN, Variant, markdown_report, measure_filter

BLOCK = {"a": {"symbol": ["a skull", "a cage", "a skull on a shelf", "a storm"]}}
BENIGN = {"a": {"neutral": ["a cup", "a book", "a ball", "a cage for birds"]}}


def make_filter(*terms: str) -> PromptFilter:
    return PromptFilter(config_from_dict(PromptFilterConfig, {"blocklist": {"symbol": list(terms)}}))


def test_clean_rates_count_the_blocked_prompts():
    report = measure_filter(make_filter("skull", "cage"), BLOCK, BENIGN, variants=[CLEAN])
    split = report["splits"]["a"]
    assert split["recall"]["every_word"]["clean"]["rate"] == 0.75
    assert split["false_positive"]["every_word"]["clean"]["rate"] == 0.25
    assert split["recall"]["every_word"]["clean"]["examples"][0]["prompt"] == "a storm"
    assert split["false_positive"]["every_word"]["clean"]["examples"][0]["prompt"] == "a cage for birds"
    assert split["summary"]["clean_recall"] == 0.75 and split["summary"]["obfuscated_recall"] is None


def test_obfuscated_variants_are_measured_in_both_modes():
    variants = [CLEAN, Variant("leet", ("leetspeak",)), Variant("spaced", ("spacing",))]
    report = measure_filter(make_filter("skull", "cage"), BLOCK, BENIGN, variants=variants, rate=1.0,
                            targets=["skull", "cage"])
    split = report["splits"]["a"]
    assert report["modes"] == ["every_word", "target_words"]
    assert set(split["recall"]["every_word"]) == {"clean", "leet", "spaced"}
    assert set(split["recall"]["target_words"]) == {"leet", "spaced"}
    assert split["recall"]["target_words"]["leet"]["rate"] == 0.75
    assert split["summary"]["obfuscated_recall"] == 0.75 and split["summary"]["lowest_variant_recall"] == 0.75


def test_a_filter_without_normalisation_loses_recall_under_obfuscation():
    flt = PromptFilter(config_from_dict(PromptFilterConfig, {"blocklist": {"symbol": ["skull"]}, "leetspeak": False}))
    report = measure_filter(flt, {"a": {"s": ["a skull"] * 4}}, BENIGN, variants=[CLEAN, Variant("leet", ("leetspeak",))],
                            rate=1.0)
    recall = report["splits"]["a"]["recall"]["every_word"]
    assert recall["clean"]["rate"] == 1.0 and recall["leet"]["rate"] == 0.0


def test_markdown_has_a_row_per_split_and_variant():
    report = measure_filter(make_filter("skull"), {**BLOCK, "b": BLOCK["a"]}, {**BENIGN, "b": BENIGN["a"]},
                            variants=[CLEAN, Variant("leet", ("leetspeak",))])
    text = markdown_report(report)
    assert "| a | 50.0% |" in text and "| b | 50.0% |" in text and "| leet |" in text


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match="every split of block needs prompts"):
        measure_filter(make_filter("skull"), {"a": {"s": []}}, BENIGN)
    with pytest.raises(ConfigError, match="unknown obfuscation transform"):
        measure_filter(make_filter("skull"), BLOCK, BENIGN, variants=[Variant("x", ("rot13",))])


def test_the_file_entry_point_measures_prompt_files(tmp_path, capsys):
    import json

    from mitigations.filter_eval import main

    (tmp_path / "unsafe.txt").write_text("# requests\na skull\na cage\n\na storm\n")
    (tmp_path / "benign.txt").write_text("a cup\na book\n")
    config = tmp_path / "filter.yaml"
    config.write_text("prompt_filter:\n  blocklist: {symbol: [skull]}\n")
    out = tmp_path / "report.json"
    assert main(["--config", str(config), "--block", str(tmp_path / "unsafe.txt"), "--benign",
                 str(tmp_path / "benign.txt"), "--out", str(out), "blocklist={symbol: [skull, cage]}"]) == 0
    summary = json.loads(out.read_text())["splits"]["files"]["summary"]
    assert summary["clean_recall"] == pytest.approx(2 / 3) and summary["clean_false_positive"] == 0.0
    assert "| files |" in capsys.readouterr().out
    assert main(["--config", str(config), "--block", str(tmp_path / "none.txt"), "--benign",
                 str(tmp_path / "benign.txt")]) == 2
    assert "prompt file" in capsys.readouterr().err
