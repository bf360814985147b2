"""``python -m preference_sets.cli {validate,stats,merge,split,export,import,moderate} ...``

``import SRC DEST`` reads a set made elsewhere (a Pick-a-Pic parquet file or folder, HF ``data/`` layout or
flat, or a datasets save_to_disk folder) and writes it in this project's format.

``moderate --set DIR --config FILE`` flags the set's images with the scorers of the file's ``moderate:`` section
and writes a report (``preference_sets.moderate``); the set is not changed.

Exit status: 0 on success, 2 on bad input (the message names the problem; no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

from core.cli import run_main
from core.errors import DataError
from mitigations.moderation import ImageModerator, load_moderation_config
from preference_sets.importer import import_set
from preference_sets.io import DEFAULT_SHARD_SIZE, iter_rows
from preference_sets.moderate import moderate_set
from preference_sets.ops import export, merge, split
from preference_sets.schema import DEFAULT_RISK
from preference_sets.stats import compute_stats
from preference_sets.validate import load_prompt_list, validate_set

SPLIT_HELP = "split to read where the source names splits (shard names, a save_to_disk dataset dict)"


def parse_fractions(text: str) -> dict[str, float]:
    """"train=0.9,val=0.1" -> {"train": 0.9, "val": 0.1}."""
    fractions = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            fractions[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise DataError(f"--fractions {text!r}: each part must look like name=0.8")
    return fractions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m preference_sets.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("validate", help="check schema, images, sizes, labels, duplicates, leakage")
    p.add_argument("folder", help="a preference set, or a Pick-a-Pic parquet file or folder, or a save_to_disk folder")
    p.add_argument("--split", default="train", help=SPLIT_HELP)
    p.add_argument("--eval-prompts", help="eval prompt file (.txt lines, .json list, .jsonl with 'prompt')")
    p.add_argument("--expected-size", help="image size every pair must have: 64 or 64x64")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")

    p = commands.add_parser("stats", help="per-risk/strategy counts, ties, balance, pair similarity, sizes")
    p.add_argument("folder")

    p = commands.add_parser("merge", help="merge sets, dropping repeated pair_ids (conflicting labels fail)")
    p.add_argument("folders", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    p.add_argument("--overwrite", action="store_true")

    p = commands.add_parser("split", help="split into parts that never share a caption (or --by column)")
    p.add_argument("folder")
    p.add_argument("--out", required=True, help="folder that will hold one set per split")
    p.add_argument("--fractions", required=True, type=parse_fractions, help="e.g. train=0.9,val=0.1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--by", default="caption")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    p.add_argument("--overwrite", action="store_true")

    p = commands.add_parser("export", help="export for diffusers train_diffusion_dpo.py (ties removed)")
    p.add_argument("folder")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train", help=SPLIT_HELP)
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    p.add_argument("--overwrite", action="store_true")

    p = commands.add_parser("import", help="read a Pick-a-Pic-style set into this project's format")
    p.add_argument("src", help="parquet file, folder of parquet files (flat or under data/), or save_to_disk folder")
    p.add_argument("dest", help="the preference-set folder to write")
    p.add_argument("--split", default="train", help=SPLIT_HELP)
    p.add_argument("--risk", default=DEFAULT_RISK, help="risk name given to every imported pair")
    p.add_argument("--resolution", type=int, help="resize and centre-crop images to this size (the model's)")
    p.add_argument("--skip-bad-rows", action="store_true", help="leave out bad rows (listed in the card)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    p.add_argument("--overwrite", action="store_true")

    p = commands.add_parser("moderate", help="flag the set's images with configured scorers; write a report, "
                                             "leave the set as it is")
    p.add_argument("--set", required=True, dest="folder", help="the preference set to screen")
    p.add_argument("--config", required=True, help="YAML file with a moderate: section (scorers and flag rules)")
    p.add_argument("--out", help="report folder (default: <set>_moderation beside the set)")
    p.add_argument("--batch-pairs", type=int, default=16, help="pairs decoded and scored at a time")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out not written by this project")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the moderate: section")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "validate":
        eval_prompts = load_prompt_list(args.eval_prompts) if args.eval_prompts else None
        report = validate_set(args.folder, eval_prompts=eval_prompts, expected_size=args.expected_size,
                              split=args.split)
        print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
        report.raise_if_invalid()
    elif args.command == "stats":
        print(json.dumps(compute_stats(iter_rows(args.folder)), indent=2))
    elif args.command == "merge":
        print(json.dumps(merge(args.folders, args.out, shard_size=args.shard_size, overwrite=args.overwrite), indent=2))
    elif args.command == "split":
        summary = split(
            args.folder, args.out, args.fractions, seed=args.seed, by=args.by,
            shard_size=args.shard_size, overwrite=args.overwrite,
        )
        print(json.dumps(summary, indent=2))
    elif args.command == "export":
        summary = export(args.folder, args.out, shard_size=args.shard_size, overwrite=args.overwrite, split=args.split)
        print(json.dumps(summary, indent=2))
    elif args.command == "import":
        summary = import_set(args.src, args.dest, split=args.split, risk=args.risk, resolution=args.resolution,
                             skip_bad_rows=args.skip_bad_rows, shard_size=args.shard_size, overwrite=args.overwrite)
        print(json.dumps(summary, indent=2))
    elif args.command == "moderate":
        if args.batch_pairs < 1:
            raise DataError(f"--batch-pairs must be >= 1, got {args.batch_pairs}")
        moderator = ImageModerator(load_moderation_config(args.config, args.overrides))
        summary = moderate_set(args.folder, moderator, args.out, overwrite=args.overwrite, batch_pairs=args.batch_pairs)
        print(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
