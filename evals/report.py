"""The before/after report: PNG plots (matplotlib, Agg) and one self-contained ``report.html``.

Self-contained means: inline CSS, every image a base64 ``data:`` URI, no script or stylesheet
fetched from anywhere, so the file can be mailed or archived and opened offline. Flagged images of a
real-model scorer can be blurred with a CSS-only click-to-reveal (a hidden checkbox inside a label),
which works in a static file with no Content-Security-Policy and no JavaScript.

Inputs are plain data: the ``summary`` dict written to ``summary.json`` (see ``evals.evaluate``) and
a list of :class:`ImageGrid` (uint8 images, same seeds for every model).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.images import encode_png
from core.io import atomic_write_bytes, atomic_write_text
from evals.metrics import sample_size_label
from evals.stack_table import stack_table_html, stack_table_markdown

# One colour per model, stable across plots (colour-blind friendly Okabe-Ito palette).
MODEL_COLORS = {
    "base": "#999999",
    "aligned": "#0072B2",
    "negative_prompt": "#E69F00",
    "filter_regenerate": "#009E73",
}
FALLBACK_COLORS = ("#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000", "#882255", "#44AA99", "#332288")
MODEL_LABELS = {
    "base": "base",
    "aligned": "aligned (DPO LoRA)",
    "negative_prompt": "negative prompts",
    "filter_regenerate": "filter + regenerate",
    "filter_regenerate_guided": "filter + guided regenerate",
    "esd_x": "ESD-x",
    "esd_u": "ESD-u",
    "sld": "SLD",
    "rewrite": "prompt rewrite",
    "dpo_stack": "DPO + stack",
}


@dataclass
class ImageGrid:
    """Images of one risk: ``rows[model][i]`` is the image for ``columns[i]`` = (prompt, seed)."""

    title: str
    columns: list[tuple[str, int]]
    rows: dict[str, list[np.ndarray]]
    flagged: dict[str, list[bool]] = field(default_factory=dict)  # blurred when blur is on
    notes: dict[str, list[str]] = field(default_factory=dict)  # short per-image caption (oracle read)


def model_color(model: str, order: list[str]) -> str:
    if model in MODEL_COLORS:
        return MODEL_COLORS[model]
    return FALLBACK_COLORS[order.index(model) % len(FALLBACK_COLORS)]


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


# ---- plots ------------------------------------------------------------------------------------


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt  # optional: only to draw a report

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def plot_metric_bars(metrics: list[dict], models: list[str]) -> bytes:
    """Grouped bars: one group per metric, one bar per model, error bars = 95% CI. PNG bytes."""
    import matplotlib  # optional: only to draw a report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: only to draw a report

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(metrics) + 2), 4.2))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(metrics))
    for j, model in enumerate(models):
        values, lows, highs = [], [], []
        for metric in metrics:
            est = metric["by_model"].get(model)
            value = est["value"] if est else np.nan
            values.append(value)
            lows.append(value - est["low"] if est else 0.0)
            highs.append(est["high"] - value if est else 0.0)
        err = np.nan_to_num(np.array([lows, highs]), nan=0.0).clip(min=0.0)
        ax.bar(
            x + (j - (len(models) - 1) / 2) * width,
            values,
            width,
            yerr=err,
            capsize=3,
            color=model_color(model, models),
            label=model_label(model),
        )
    for i, metric in enumerate(metrics):
        bar = metric.get("bar")
        if bar and bar.get("op") in ("<=", ">="):  # absolute targets only; "within base" bars are relative
            ax.hlines(bar["value"], i - 0.45, i + 0.45, colors="#D55E00", linestyles="dashed", linewidth=1.2)
    arrows = {"lower": " (lower is better)", "higher": " (higher is better)"}
    ax.set_xticks(x, [m["short"] + "\n" + arrows.get(m.get("direction", ""), "") for m in metrics], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate (95% CI, bootstrap over prompts)")
    ax.legend(fontsize=8, ncol=min(4, len(models)), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_title("Risk and alignment rates per model (dashed: bar to meet)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _figure_png(fig)


def plot_group_distributions(stereotype: dict, models: list[str]) -> bytes:
    """Stacked bars: for each role, each model's share of every group. PNG bytes."""
    import matplotlib  # optional: only to draw a report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: only to draw a report

    groups = stereotype["groups"]
    roles = list(stereotype["shares"].keys())
    fig, axes = plt.subplots(1, max(1, len(roles)), figsize=(max(6.0, 2.2 * len(roles)), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    group_colors = plt.get_cmap("Set2")(np.arange(len(groups)))
    for ax, role in zip(axes, roles):
        bottom = np.zeros(len(models))
        for g, group in enumerate(groups):
            heights = np.array([stereotype["shares"][role].get(model, [np.nan] * len(groups))[g] for model in models])
            ax.bar(range(len(models)), heights, bottom=bottom, color=group_colors[g], label=group)
            bottom += np.nan_to_num(heights)
        ax.axhline(1.0 / len(groups), color="black", linestyle=":", linewidth=1)
        ax.set_title(role, fontsize=9)
        ax.set_xticks(range(len(models)), [model_label(m) for m in models], rotation=45, ha="right", fontsize=7)
    axes[0].set_ylabel("group share")
    axes[0].set_ylim(0, 1)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="group", title_fontsize=7)
    fig.suptitle("Stereotypes: group drawn for role prompts that name no group (dotted: uniform)", fontsize=10)
    return _figure_png(fig)


# ---- HTML -------------------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1120px; color: #222; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 2px solid #0072B2; padding-bottom: 3px; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
.meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { color: #666; font-size: 0.85em; }
.met { color: #117733; font-weight: bold; }
.missed { color: #CC3311; font-weight: bold; }
.plot { max-width: 100%; border: 1px solid #ddd; }
.grid td { text-align: center; padding: 2px; border-color: #eee; }
.grid img { width: 96px; height: 96px; image-rendering: pixelated; display: block; margin: 0 auto; }
.grid .cap { font-size: 0.7em; color: #555; max-width: 104px; }
.grid th { font-size: 0.75em; font-weight: normal; max-width: 104px; }
.note { background: #fff8e1; border-left: 4px solid #E69F00; padding: 6px 10px; font-size: 0.9em; }
/* click-to-reveal without JavaScript: the checkbox sits inside the label; checked -> no blur */
.reveal { position: relative; display: inline-block; cursor: pointer; }
.reveal input { position: absolute; opacity: 0; pointer-events: none; }
.reveal img.flagged { filter: blur(var(--blur)); }
.reveal input:checked + img.flagged { filter: none; }
.reveal .hint { position: absolute; bottom: 2px; left: 0; right: 0; font-size: 0.65em; color: #fff;
                background: rgba(0,0,0,0.55); }
.reveal input:checked ~ .hint { display: none; }
"""


def data_uri_png(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _estimate_cell(est: dict | None, signed: bool = False) -> str:
    if not est:
        return '<td class="num">–</td>'
    value = est["value"]
    sign = "+" if signed and value is not None and value > 0 else ""
    return (
        f'<td class="num">{sign}{_fmt(value)}<br><span class="ci">[{_fmt(est["low"])}, {_fmt(est["high"])}]</span></td>'
    )


SPLIT_LABELS = {"in_grammar": "in-grammar", "phrasing_shift": "phrasing shift"}


def _sections(summary: dict) -> list[tuple[str | None, dict]]:
    """(split, section) per eval split; one unnamed section for a summary without splits."""
    splits = summary.get("splits") or {}
    return list(splits.items()) if splits else [(None, summary)]


def _bars_table(summary: dict) -> str:
    """One row per check, the eval splits side by side (base, aligned, paired CI excludes 0, result)."""
    bars = summary.get("bars") or []
    if not bars:
        return ""
    splits = list(dict.fromkeys(bar.get("split") for bar in bars))
    checks = list(dict.fromkeys((bar.get("metric", bar["title"]), bar["title"], bar["target"]) for bar in bars))
    cell = {(bar.get("metric", bar["title"]), bar.get("split")): bar for bar in bars}
    rows = []
    for metric, title, target in checks:
        tds = []
        for split in splits:
            bar = cell.get((metric, split))
            if bar is None:
                tds.append('<td class="num">–</td>' * 4)
                continue
            status = '<span class="met">met</span>' if bar["met"] else '<span class="missed">missed</span>'
            sig = bar.get("paired_ci_excludes_zero")
            sig_text = "–" if sig is None else ("yes" if sig else '<span class="missed">no</span>')
            tds.append(f'<td class="num">{_fmt(bar.get("base"))}</td><td class="num">{_fmt(bar.get("aligned"))}</td>'
                       f"<td>{sig_text}</td><td>{status}</td>")
        rows.append(f"<tr><td>{html.escape(title)}</td><td>{html.escape(target)}</td>{''.join(tds)}</tr>")
    top = "".join(f"<th colspan='4'>{html.escape(SPLIT_LABELS.get(s, s or 'eval split'))}</th>" for s in splits)
    sub = "<th>Base</th><th>Aligned</th><th>CI excl. 0</th><th>Result</th>" * len(splits)
    return (
        "<h2>Bars (aligned vs base, per eval split)</h2><table><tr><th rowspan='2'>Check</th><th rowspan='2'>Bar</th>"
        f"{top}</tr><tr>{sub}</tr>" + "".join(rows) + "</table>"
    )


def _metrics_table(summary: dict) -> str:
    models = summary["models"]
    head = "".join(f"<th>{html.escape(model_label(m))}</th>" for m in models)
    diffs = [m for m in models if m != "base"]
    diff_head = "".join(f"<th>{html.escape(model_label(m))} − base</th>" for m in diffs)
    blocks = []
    for split, section in _sections(summary):
        rows = []
        for metric in section["metrics"]:
            cells = "".join(_estimate_cell(metric["by_model"].get(m)) for m in models)
            diff_cells = "".join(
                _estimate_cell(metric.get("paired_difference", {}).get(m), signed=True) for m in diffs
            )
            direction = {"lower": "↓ better", "higher": "↑ better"}.get(metric.get("direction", ""), "")
            rows.append(
                f"<tr><td>{html.escape(metric['title'])}<br><span class='ci'>{direction}; "
                f"{html.escape(metric.get('population', ''))}</span></td>{cells}{diff_cells}</tr>"
            )
        where = f" — {SPLIT_LABELS.get(split, split)}" if split else ""
        blocks.append(
            f"<h2>All metrics{html.escape(where)} (value and 95% CI; differences are paired over the same prompts "
            f"and seeds)</h2><table><tr><th>Metric</th>{head}{diff_head}</tr>" + "".join(rows) + "</table>"
        )
    return "".join(blocks)


def _per_group_table(summary: dict) -> str:
    blocks = []
    for split, metric in [(sp, mt) for sp, section in _sections(summary) for mt in section["metrics"]]:
        per_group = metric.get("per_group")
        if not per_group:
            continue
        models = [m for m in summary["models"] if m in per_group]
        groups = sorted({g for m in models for g in per_group[m]})
        head = "".join(f"<th>{html.escape(g)}</th>" for g in groups)
        rows = "".join(
            f"<tr><td>{html.escape(model_label(m))}</td>"
            + "".join(f'<td class="num">{_fmt(per_group[m].get(g))}</td>' for g in groups)
            + "</tr>"
            for m in models
        )
        where = f" ({SPLIT_LABELS.get(split, split)})" if split else ""
        blocks.append(
            f"<h3>{html.escape(metric['title'])}: per group{html.escape(where)}</h3>"
            f"<table><tr><th>Model</th>{head}</tr>{rows}</table>"
        )
    return "".join(blocks)


def _stereotype_table(summary: dict) -> str:
    return "".join(_stereotype_section(summary["models"], section.get("stereotype"), split)
                   for split, section in _sections(summary))


def _stereotype_section(models: list[str], stereo: dict | None, split: str | None) -> str:
    if not stereo:
        return ""
    heading = f"<h3>{html.escape(SPLIT_LABELS.get(split, split))}</h3>" if split else ""
    models = [m for m in models if m in stereo["by_model"]]
    names = ("max_share", "kl_to_uniform", "entropy", "mean_absolute_deviation")
    head = "".join(f"<th>{n.replace('_', ' ')}</th>" for n in names)
    rows = "".join(
        f"<tr><td>{html.escape(model_label(m))}</td>"
        + "".join(f'<td class="num">{_fmt(stereo["by_model"][m].get(n))}</td>' for n in names)
        + "</tr>"
        for m in models
    )
    uniform = stereo.get("uniform", {})
    rows += (
        "<tr><td><i>uniform</i></td>"
        + "".join(f'<td class="num"><i>{_fmt(uniform.get(n))}</i></td>' for n in names)
        + "</tr>"
    )
    floor = ""
    if stereo.get("uniform_model_reads") is not None:
        size = sample_size_label(stereo.get("images_per_role") or {})
        floor = (f"<p>At this sample size ({size} "
                 f"images per role) a perfectly uniform model would read a max share of "
                 f"{_fmt(stereo['uniform_model_reads'])}, not {_fmt(uniform.get('max_share'))}: the plug-in "
                 "max share is biased upward at small samples.</p>")
    by_role = ""
    if stereo.get("max_share_by_role"):
        roles = stereo["roles"]
        role_rows = "".join(
            f"<tr><td>{html.escape(model_label(m))}</td>" + "".join(
                f'<td class="num">{_fmt(stereo["max_share_by_role"][m][r])} '
                f'<span class="ci">{html.escape(stereo["majority_group_by_role"][m][r])}</span></td>' for r in roles)
            + "</tr>" for m in models if m in stereo["max_share_by_role"])
        by_role = ("<p>Each role's max group share and the group that holds it (bar: no role above 0.60).</p>"
                   "<table><tr><th>Model</th>" + "".join(f"<th>{html.escape(r)}</th>" for r in roles)
                   + f"</tr>{role_rows}</table>")
    return (
        heading + "<p>Mean over roles of each role's group-distribution measure (KL and entropy in nats).</p>"
        f"<table><tr><th>Model</th>{head}</tr>{rows}</table>" + floor + by_role
    )


def _baseline_table(summary: dict) -> str:
    """DPO against each baseline on each risk: aligned − baseline with its paired CI and a verdict."""
    rows = summary.get("baseline_comparison") or []
    if not rows:
        return ""
    baselines = list(dict.fromkeys(r["baseline"] for r in rows))
    label = lambda r: r["title"] + (f" ({SPLIT_LABELS.get(r['split'], r['split'])})" if r.get("split") else "")  # noqa: E731
    metrics = list(dict.fromkeys(label(r) for r in rows))
    cells = {(label(r), r["baseline"]): r for r in rows}
    verdict_class = {"beats": "met", "loses to": "missed"}
    body = []
    for title in metrics:
        tds = []
        for baseline in baselines:
            r = cells.get((title, baseline))
            if r is None:
                tds.append('<td class="num">–</td>')
                continue
            d = r["difference"]
            cls = verdict_class.get(r["verdict"], "")
            tds.append(
                f'<td class="num"><span class="{cls}">{html.escape(r["verdict"])}</span> {d["value"]:+.3f}'
                f'<br><span class="ci">[{d["low"]:+.3f}, {d["high"]:+.3f}]</span></td>'
            )
        body.append(f"<tr><td>{html.escape(title)}</td>{''.join(tds)}</tr>")
    head = "".join(f"<th>vs {html.escape(model_label(b))}</th>" for b in baselines)
    return (
        "<h2>DPO vs the baselines (aligned − baseline, paired 95% CI)</h2>"
        f"<table><tr><th>Risk</th>{head}</tr>{''.join(body)}</table>"
    )


def _filter_section(summary: dict) -> str:
    info = summary.get("filter_baseline")
    if not info:
        return ""
    return (
        "<h2>Output filter + regenerate: cost</h2>"
        f"<p>Scorer <b>{html.escape(str(info['scorer']))}</b> flags an image when "
        f"{html.escape(info['flag_rule'])}; a flagged image is regenerated with a new seed up to "
        f"<b>{info['max_retries']}</b> times.</p><table>"
        f"<tr><th>Images served</th><td class='num'>{info['images']}</td></tr>"
        f"<tr><th>Extra generations</th><td class='num'>{info['extra_generations']} "
        f"({_fmt(info['extra_generations_per_image'], 2)} per image)</td></tr>"
        f"<tr><th>Flagged at first try</th><td class='num'>{_fmt(info['flagged_first_try_rate'])}</td></tr>"
        f"<tr><th>Still flagged after {info['max_retries']} retries (residual)</th>"
        f"<td class='num'>{_fmt(info['residual_flagged_rate'])}</td></tr></table>"
    )


def _grid_html(grid: ImageGrid, models: list[str], blur_px: int) -> str:
    head = "".join(
        f"<th>{html.escape(prompt)}<br><span class='ci'>seed {seed}</span></th>" for prompt, seed in grid.columns
    )
    rows = []
    for model in models:
        images = grid.rows.get(model)
        if images is None:
            continue
        flagged = grid.flagged.get(model, [False] * len(images))
        notes = grid.notes.get(model, [""] * len(images))
        cells = []
        for image, flag, note in zip(images, flagged, notes):
            uri = data_uri_png(encode_png(image))
            if flag and blur_px > 0:
                img = (
                    f'<label class="reveal" title="flagged: click to reveal"><input type="checkbox">'
                    f'<img class="flagged" src="{uri}" alt="flagged image, blurred"><span class="hint">'
                    "click to reveal</span></label>"
                )
            else:
                img = f'<img src="{uri}" alt="{html.escape(model_label(model))}">'
            cells.append(f"<td>{img}<div class='cap'>{html.escape(note)}</div></td>")
        rows.append(f"<tr><th>{html.escape(model_label(model))}</th>{''.join(cells)}</tr>")
    return f"<h3>{html.escape(grid.title)}</h3><table class='grid'><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def render_html(summary: dict, plots: dict[str, bytes], grids: list[ImageGrid], blur_px: int = 0) -> str:
    """The whole report as one HTML string (no external resources)."""
    models = summary["models"]
    title = f"Safety eval: {summary.get('run_name', '')}"
    meta = summary.get("meta", {})
    meta_html = " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in meta.items())
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in summary.get("notes", []))
    plot_html = "".join(
        f"<h2>{html.escape(caption)}</h2><img class='plot' src='{data_uri_png(png)}' alt='{html.escape(caption)}'>"
        for caption, png in plots.items()
    )
    stereo = _stereotype_table(summary)
    grids_html = "".join(_grid_html(g, models, blur_px) for g in grids)
    reveal_note = (
        "<p class='meta'>Images flagged by the scorer are blurred; click one to reveal it.</p>" if blur_px > 0 else ""
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>:root {{ --blur: {int(blur_px)}px; }}{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='meta'>{meta_html}</p>{notes}"
        f"{_bars_table(summary)}{stack_table_html(summary, model_label)}{_baseline_table(summary)}{plot_html}"
        f"{('<h2>Stereotype measures</h2>' + stereo) if stereo else ''}"
        f"{_metrics_table(summary)}{_per_group_table(summary)}{_filter_section(summary)}"
        f"<h2>Images: same prompts and seeds for every model</h2>{reveal_note}{grids_html}"
        "</body></html>\n"
    )


def grid_png(grid: ImageGrid, models: list[str], scale: int = 2, gap: int = 4) -> bytes:
    """One grid as a PNG: a row per model (in ``models`` order), a column per (prompt, seed), images upscaled
    ``scale``× with ``gap`` white pixels between them; a label strip of each row's model on the left."""

    rows = [m for m in models if grid.rows.get(m)]
    if not rows:
        return b""
    h, w = np.asarray(grid.rows[rows[0]][0]).shape[:2]
    cell_h, cell_w, label_w = h * scale, w * scale, 130
    canvas = Image.new("RGB", (label_w + len(grid.columns) * (cell_w + gap), len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, model in enumerate(rows):
        top = r * (cell_h + gap)
        draw.text((4, top + cell_h // 2 - 6), model_label(model)[:22], fill="black")
        for c, image in enumerate(grid.rows[model]):
            tile = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (cell_w + gap), top))
    return encode_png(canvas)


def _slug(title: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in title.lower()).strip("-")[:60]


def write_report(
    folder: str | Path, summary: dict, grids: list[ImageGrid], blur_px: int = 0
) -> dict[str, Path]:
    """Write plots as PNG and ``report.html`` into ``folder``; return the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = summary["models"]
    plots: dict[str, bytes] = {}
    paths: dict[str, Path] = {}
    bar_metrics = [m for m in summary["metrics"] if m.get("plot", True)]
    if bar_metrics:
        plots["Rates per risk and model"] = plot_metric_bars(bar_metrics, models)
        paths["rates_png"] = folder / "rates.png"
        atomic_write_bytes(paths["rates_png"], plots["Rates per risk and model"])
    if summary.get("stereotype") and summary["stereotype"].get("shares"):
        plots["Stereotypes: group distributions"] = plot_group_distributions(summary["stereotype"], models)
        paths["stereotype_png"] = folder / "stereotype_groups.png"
        atomic_write_bytes(paths["stereotype_png"], plots["Stereotypes: group distributions"])
    if summary.get("mitigations"):
        paths["stack_md"] = folder / "stack_table.md"
        atomic_write_text(paths["stack_md"], stack_table_markdown(summary))
    if summary.get("bars"):
        paths["bars_md"] = folder / "bars.md"
        atomic_write_text(paths["bars_md"], markdown_bars(summary))
    for grid in grids:  # each grid also as a PNG, for docs and slides
        png = grid_png(grid, models)
        if png:
            path = folder / "grids" / f"{_slug(grid.title)}.png"
            path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(path, png)
    paths["report"] = folder / "report.html"
    atomic_write_text(paths["report"], render_html(summary, plots, grids, blur_px))
    return paths


def markdown_bars(summary: dict) -> str:
    """The bars as a Markdown table, the eval splits side by side (base → aligned, met or missed), for READMEs
    and notes; written beside the report as ``bars.md``."""
    bars = summary.get("bars") or []
    splits = list(dict.fromkeys(bar.get("split") for bar in bars))
    checks = list(dict.fromkeys((bar.get("metric", bar["title"]), bar["title"], bar["target"]) for bar in bars))
    cell = {(bar.get("metric", bar["title"]), bar.get("split")): bar for bar in bars}
    head = "| check | bar | " + " | ".join(SPLIT_LABELS.get(s, s or "eval") for s in splits) + " |"
    lines = [head, "|" + "---|" * (2 + len(splits))]
    for metric, title, target in checks:
        cells = []
        for split in splits:
            bar = cell.get((metric, split))
            if bar is None:
                cells.append("–")
                continue
            ci = "" if bar.get("paired_ci_excludes_zero") in (None, True) else ", CI includes 0"
            cells.append(f"{_fmt(bar['base'])} → {_fmt(bar['aligned'])} {'met' if bar['met'] else '**missed**'}{ci}")
        lines.append(f"| {title} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def console_table(summary: dict) -> str:
    """Plain-text summary for the end of ``make eval``: each split's metrics, then every bar."""
    models = summary["models"]
    lines = []
    for split, section in _sections(summary):
        metrics = section["metrics"]
        width = max(len(m["short"]) for m in metrics) if metrics else 10
        header = f"{'metric':<{width}}  " + "  ".join(f"{model_label(m)[:20]:>20}" for m in models)
        if "aligned" in models:
            header += f"  {'aligned-base [95% CI]':>26}"
        if split:
            lines.append(f"[{SPLIT_LABELS.get(split, split)}]")
        lines += [header, "-" * len(header)]
        for metric in metrics:
            cells = []
            for model in models:
                est = metric["by_model"].get(model)
                cells.append(f"{_fmt(est['value']) if est else '–':>20}")
            line = f"{metric['short']:<{width}}  " + "  ".join(cells)
            diff = metric.get("paired_difference", {}).get("aligned")
            if "aligned" in models:
                text = f"{diff['value']:+.3f} [{diff['low']:+.3f},{diff['high']:+.3f}]" if diff else "–"
                line += f"  {text:>26}"
            lines.append(line)
        lines.append("")
    bars = summary.get("bars") or []
    if bars:
        missed = [b for b in bars if not b["met"]]
        lines.append(f"bars: {len(bars) - len(missed)} of {len(bars)} met")
        for b in missed:
            where = f" [{SPLIT_LABELS.get(b.get('split'), b.get('split'))}]" if b.get("split") else ""
            lines.append(f"  missed{where}: {b['title']} ({b['target']}): base {_fmt(b['base'])}, "
                         f"aligned {_fmt(b['aligned'])}")
    return "\n".join(lines).rstrip()
