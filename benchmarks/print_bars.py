"""One line per eval run for the GPU recipe scripts: every bar (+ met, - missed) and each role's aligned group shares.

    python -m benchmarks.print_bars NAME runs/x/eval/summary.json ["the run's overrides"]
"""

from __future__ import annotations

import json
import sys


def bars_line(name: str, summary: dict, args: str = "") -> str:
    cells = [f"{b['metric']}={b['aligned']:.3f}{'+' if b['met'] else '-'}" for b in summary["bars"]]
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
