"""The red-team report: ``report.md`` (the ASR table) and ``report.html`` (the table and a grid of successful
attacks, self-contained: images inlined, every prompt escaped as text)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image, ImageFilter

from core.io import atomic_write_text


def _fmt_ci(row: dict) -> str:
    low, high = row["ci"]
    return f"{row['asr']:.3f} [{low:.3f}, {high:.3f}]"


def _fmt_transfer(row: dict) -> str:
    t = row.get("transfer")
    if not t:
        return "–"
    return f"{t['mean']:.2f} [{t['ci'][0]:.2f}, {t['ci'][1]:.2f}] (n={t['prompts']})"


def _budget(row: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in row["budget"].items() if k not in ("csv", "filter"))


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | risk | attack | ASR [CI] | broken / targets | transfer on fresh seeds | budget | images | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        extra = f" (filter pass {row['filter_pass_rate']:.2f})" if "filter_pass_rate" in row else ""
        lines.append(f"| {row['model']} | {row['risk']} | {row['attack']}{extra} | {_fmt_ci(row)} | "
                     f"{row['successes']} / {row['targets']} | {_fmt_transfer(row)} | {_budget(row)} | "
                     f"{row['images_generated']} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def _learnt(rows: list[dict]) -> str:
    """What the black-box search learnt: its highest-rated phrases per model and risk."""
    lines = ["Phrases the search rated highest (posterior success rate, times tried):", ""]
    for row in rows:
        if row.get("top_phrases"):
            phrases = "; ".join(f"{p['phrase']} {p['rate']:.2f} ({p['tried']})" for p in row["top_phrases"])
            lines.append(f"- {row['model']} / {row['risk']}: {phrases}")
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown_report(summary: dict) -> str:
    skipped = "".join(f"\n- {s['model']}: skipped ({s['reason']}: {s['lora']})" for s in summary["skipped_models"])
    dropped = summary["found_prompts"].get("dropped", {})
    return f"""# Red-team report

Suite `{summary['suite']}`; models: {', '.join(summary['models'])}.{skipped}

ASR: the share of targets (benign start prompts) for which the attack found, within its budget, an input whose
images the reader judges to show the risk; {summary['confidence']:.0%} Wilson intervals over targets. Broken means:
{summary['success_definition']} `none`: the
targets' own prompts, no attack (the model's plain rate on them). Transfer:
the success share of the prompts found on fresh seeds (bootstrap interval over prompts). `search`: black-box
phrase search; `embedding`: the optimised text embedding itself; `projected`: the same projected to tokens;
`filter`: obfuscated explicit requests that pass the prompt filter and still show the risk.

{markdown_table(summary['rows'])}

{_learnt(summary['rows'])}

Prompts found: {summary['found_prompts']['kept']} kept in `found_prompts.txt` (dropped: {dropped}).
Wall time {summary['seconds']:.0f} s on {summary['device']} ({summary['torch_threads']} torch threads).
"""


def _image_data(path: Path, blur: float) -> str:
    image = Image.open(path).convert("RGB")
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    if image.width < 128:
        image = image.resize((128, 128 * image.height // image.width), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def html_report(folder: Path, summary: dict, grid: list[dict], cfg) -> str:
    esc = html.escape
    head = "".join(f"<th>{h}</th>" for h in ("model", "risk", "attack", "ASR [CI]", "broken / targets",
                                             "transfer", "budget", "images", "s"))
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in (
            r["model"], r["risk"], r["attack"], _fmt_ci(r), f"{r['successes']} / {r['targets']}", _fmt_transfer(r),
            _budget(r), r["images_generated"], f"{r['seconds']:.0f}")) + "</tr>" for r in summary["rows"])
    sections = []
    cells: dict[tuple, list[dict]] = {}
    for item in grid:
        cells.setdefault((item["model"], item["risk"], item["attack"]), []).append(item)
    for (model, risk, attack), items in cells.items():
        figures = "".join(
            f'<figure><img alt="" src="data:image/png;base64,{_image_data(folder / i["image"], cfg.report.blur_px)}">'
            f"<figcaption>{esc(i['prompt'])}</figcaption></figure>" for i in items)
        sections.append(f"<h3>{esc(model)} · {esc(risk)} · {esc(attack)}</h3>"
                        f'<div class="grid" style="grid-template-columns: repeat({cfg.report.grid_columns}, 1fr)">'
                        f"{figures}</div>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>Red-team report</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:3px 6px;font-size:13px}} .grid{{display:grid;gap:8px}} figure{{margin:0}} img{{width:128px;
image-rendering:pixelated}} figcaption{{font-size:11px;max-width:180px;word-wrap:break-word}}</style></head>
<body><h1>Red-team report</h1><p>Suite {esc(str(summary['suite']))}; {summary['seconds']:.0f} s on
{esc(summary['device'])}. ASR with {summary['confidence']:.0%} Wilson intervals over targets.
{esc(summary['success_definition'])}</p>
<table><tr>{head}</tr>{body}</table><h2>Successful attacks</h2>{''.join(sections) or '<p>none</p>'}</body></html>
"""


def write_reports(folder: Path, summary: dict, grid: list[dict], cfg) -> None:
    atomic_write_text(folder / "report.md", markdown_report(summary))
    atomic_write_text(folder / "report.html", html_report(folder, summary, grid, cfg))
