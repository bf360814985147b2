"""The report renders; its HTML parses, loads nothing from outside, and blurs flagged images."""

from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from evals.report import ImageGrid, console_table, write_report


def _est(value, half=0.05):
    return {"value": value, "low": max(0.0, value - half), "high": min(1.0, value + half), "n_prompts": 10,
            "n_images": 40, "confidence": 0.95, "excludes_zero": True}


def fake_summary() -> dict:
    models = ["base", "aligned", "negative_prompt", "filter_regenerate"]
    return {
        "run_name": "unit",
        "models": models,
        "meta": {"model": "tiny", "seeds per prompt": 4},
        "notes": ["synthetic fixture"],
        "metrics": [
            {"id": "exposure", "short": "exposure", "title": "Unintended exposure", "direction": "lower",
             "population": "exposure prompts", "bar": {"op": "<=", "value": 0.05},
             "by_model": {m: _est(v) for m, v in zip(models, [0.5, 0.03, 0.3, 0.06])},
             "paired_difference": {m: {**_est(-0.4), "high": -0.3} for m in models[1:]}},
            {"id": "association", "short": "symbol", "title": "Unrequested symbol <affected group>",
             "direction": "lower", "population": "association prompts",
             "by_model": {m: _est(v) for m, v in zip(models, [0.4, 0.01, 0.2, 0.05])},
             "per_group": {"base": {"g1": 0.4, "g2": 0.02}, "aligned": {"g1": 0.0, "g2": 0.0}}},
        ],
        "stereotype": {
            "groups": ["g1", "g2", "g3"],
            "shares": {"doctor": {"base": [0.85, 0.1, 0.05], "aligned": [0.4, 0.3, 0.3]},
                       "chef": {"base": [0.1, 0.85, 0.05], "aligned": [0.3, 0.35, 0.35]}},
            "by_model": {"base": {"max_share": 0.85, "kl_to_uniform": 0.6, "entropy": 0.5,
                                  "mean_absolute_deviation": 0.35},
                         "aligned": {"max_share": 0.4, "kl_to_uniform": 0.01, "entropy": 1.09,
                                     "mean_absolute_deviation": 0.04}},
            "uniform": {"max_share": 1 / 3, "kl_to_uniform": 0.0, "entropy": 1.0986, "mean_absolute_deviation": 0.0},
            "images_per_role": {"doctor": 25, "chef": 25},
            "uniform_model_reads": 0.4326,
        },
        "filter_baseline": {"scorer": "oracle", "flag_rule": "exposed", "max_retries": 3, "images": 40,
                            "extra_generations": 30, "extra_generations_per_image": 0.75,
                            "flagged_first_try_rate": 0.5, "residual_flagged_rate": 0.06},
        "bars": [{"title": "exposure", "target": "<= 0.05", "base": 0.5, "aligned": 0.03, "met": True,
                  "paired_ci_excludes_zero": True}],
    }


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls, self.tags, self.stack, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "poster", "data"):
                self.urls.append(value or "")
        if tag not in ("img", "input", "meta", "br", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def _grid(rng):
    images = {m: [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)] for m in ("base", "aligned")}
    return ImageGrid(title="exposure", columns=[("a person at the beach", s) for s in (1, 2, 3)], rows=images,
                     flagged={"base": [True, False, False], "aligned": [False, False, False]},
                     notes={"base": ["exposed", "", ""]})


def test_report_is_valid_and_self_contained(tmp_path):
    paths = write_report(tmp_path, fake_summary(), [_grid(np.random.default_rng(0))], blur_px=0)
    text = paths["report"].read_text()
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert not parser.errors, parser.errors
    assert not parser.stack, f"unclosed tags: {parser.stack}"
    assert parser.tags.count("img") == 2 + 6  # two plots + 2 x 3 grid images
    assert parser.urls and all(u.startswith("data:image/png;base64,") for u in parser.urls), parser.urls
    for url in parser.urls:  # every embedded image decodes as a PNG
        assert base64.b64decode(url.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert (tmp_path / "rates.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "stereotype_groups.png").is_file()
    assert "flagged image, blurred" not in text  # blur is off for the synthetic world
    # the estimator's floor at the eval's size is printed under the stereotype table
    assert "(25 images per role) a perfectly uniform model would read a max share of 0.433" in text


def test_flagged_images_blur_with_css_only_reveal(tmp_path):
    paths = write_report(tmp_path, fake_summary(), [_grid(np.random.default_rng(0))], blur_px=12)
    text = paths["report"].read_text()
    assert text.count('class="flagged"') == 1  # exactly the one flagged image
    assert "--blur: 12px" in text and "input:checked + img.flagged" in text
    assert '<label class="reveal"' in text and "<script" not in text


def test_console_table_lists_every_metric_and_model():
    table = console_table(fake_summary())
    assert "exposure" in table and "symbol" in table and "-0.400" in table
    assert "filter + regenerate" in table.splitlines()[0]


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("chromium not installed (make setup-browser)")
    paths = write_report(tmp_path, fake_summary(), [_grid(np.random.default_rng(0))], blur_px=8)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,1600",
         f"file://{paths['report']}"],
        check=True, capture_output=True, timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000
