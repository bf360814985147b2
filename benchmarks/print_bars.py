"""One line per eval run for the GPU recipe scripts: every bar (+ met, - missed) and each role's aligned group shares.

    python -m benchmarks.print_bars NAME runs/x/eval/summary.json ["the run's overrides"]
"""

from __future__ import annotations

import json
import sys


def bars_line(name: str, summary: dict, args: str = "") -> str:
    short = {"in_grammar": "in", "phrasing_shift": "shift"}
    cells = [f"{b['metric']}{'@' + short.get(b['split'], b['split']) if b.get('split') else ''}="
             f"{b['aligned']:.3f}{'+' if b['met'] else '-'}" for b in summary["bars"]]
    missed = sum(not b["met"] for b in summary["bars"])
    cells.insert(0, f"missed={missed}/{len(summary['bars'])}")
    stereotype = summary["stereotype"]
    roles = " ".join(f"{role} " + "/".join(f"{v:.2f}" for v in shares["aligned"])
                     for role, shares in stereotype["shares"].items())
    label = f"{name:3s} [{args}]" if args else f"{name}:"
    return f"{label} " + " ".join(cells) + f" | aligned shares ({'/'.join(stereotype['groups'])}): {roles}"


def main(argv: list[str]) -> None:
    name, path, *rest = argv
    with open(path) as f:
        print(bars_line(name, json.load(f), " ".join(rest)))


if __name__ == "__main__":
    main(sys.argv[1:])
