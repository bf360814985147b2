"""``python -m annotation.cli <command>``: serve the tool, manage annotators, report, adjudicate, export.

    serve        --set SET [--port P] [--host H] [--config C] [key=value ...]   (make annotate)
                 validates the set first and refuses an invalid one, naming its bad rows
    add-user     NAME [--admin]     print a new annotator's token (shown once)
    revoke-user  NAME               the token and every session of NAME stop working at once
    list-users
    report       [--out FILE]       agreement (Cohen's kappa, Krippendorff's alpha, gold accuracy)
    adjudicate   [--pair-id ID --answer 0|1|tie --by NAME [--note TEXT]]   list or settle disputes
    export       [--out FOLDER] [--overwrite]   write a new version of the set with the decisions

Every command takes ``--set`` (the preference set) and/or ``--db`` (default:
``<set parent>/annotation/<set name>.sqlite``), plus ``--config`` and overrides of the ``annotate:`` section
as ``--key value`` or ``key=value`` (``serve --help`` lists the keys).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from annotation.agreement import agreement_report, disputed_items
from annotation.config import AnnotateConfig
from annotation.export import export_set
from annotation.prefset_io import ImageSource, check_set, read_gold_file, select_items
from annotation.server import AnnotationApp, AnnotationServer, announce
from annotation.store import SIDE_FILES, Store
from core.cli import StageCLI, run_main, stop_on_signals
from core.config import load_stage_config, write_resolved_config
from core.errors import ConfigError
from core.io import atomic_write_json
from preference_sets.io import check_schemas

RESOLVED_CONFIG = "resolved_config.yaml"
DATASETS_CACHE = "datasets_cache"  # beside the database: the image cache never goes to ~/.cache


def default_db(set_folder: Path) -> Path:
    return set_folder.parent / "annotation" / f"{set_folder.name}.sqlite"


CLI = StageCLI(AnnotateConfig, "annotate", prog="python -m annotation.cli", description=__doc__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m annotation.cli", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--set", dest="set_folder", type=Path, help="preference set folder")
        p.add_argument("--db", type=Path, help="annotation database (SQLite)")
        return CLI.add_arguments(p, keys_help=p.prog.endswith(" serve"))

    serve = common(sub.add_parser("serve", help="run the web tool", allow_abbrev=False))
    serve.add_argument("--port", type=int, help="= port=PORT")
    serve.add_argument("--host", help="= host=HOST")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    add = common(sub.add_parser("add-user", help="create an annotator and print its token"))
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may see every image (adjudication)")
    revoke = common(sub.add_parser("revoke-user", help="revoke a user's token and sessions"))
    revoke.add_argument("name")
    common(sub.add_parser("list-users", help="list users"))
    report = common(sub.add_parser("report", help="agreement report"))
    report.add_argument("--out", type=Path, help="also write the report as JSON here")
    adjudicate = common(sub.add_parser("adjudicate", help="list disputed items, or settle one"))
    adjudicate.add_argument("--pair-id")
    adjudicate.add_argument("--answer", choices=["0", "1", "tie"])
    adjudicate.add_argument("--by", help="adjudicator's name")
    adjudicate.add_argument("--note", default="")
    export = common(sub.add_parser("export", help="write a new version of the set"))
    export.add_argument("--out", type=Path, help="new set folder (default: <set>-vN, the next free N)")
    export.add_argument("--overwrite", action="store_true")
    return parser


def load_config(args: argparse.Namespace) -> AnnotateConfig:
    overrides = list(args.overrides)
    if getattr(args, "port", None) is not None:
        overrides.append(f"port={args.port}")
    if getattr(args, "host", None) is not None:
        overrides.append(f"host={args.host}")
    return load_stage_config(AnnotateConfig, args.config, "annotate", overrides)


def open_store(args: argparse.Namespace, cfg: AnnotateConfig) -> Store:
    db = args.db or (Path(cfg.db) if cfg.db else None) or (default_db(args.set_folder) if args.set_folder else None)
    if db is None:
        raise ConfigError("say which annotation database to use: --set <preference set> or --db <file>")
    if args.command != "serve" and not db.exists():
        raise ConfigError(f"annotation database {db} does not exist yet; start `serve` (or add-user) with --set first")
    return Store(db)


def require_set(args: argparse.Namespace) -> Path:
    if args.set_folder is None:
        raise ConfigError(f"`{args.command}` needs --set <preference set folder>")
    return args.set_folder


def remove_created(paths: list[Path], cache: Path) -> None:
    """Remove what a failed start created, given in creation order (a folder before its contents)."""
    for path in reversed(paths):
        if path == cache:
            shutil.rmtree(path, ignore_errors=True)  # written whole by this run
        elif path.is_dir():
            try:
                os.rmdir(path)  # only if empty: anything else in it is not ours
            except OSError:
                pass
        else:
            path.unlink(missing_ok=True)


def cmd_serve(args: argparse.Namespace, cfg: AnnotateConfig) -> None:
    set_folder = require_set(args)
    check_set(set_folder)  # before anything is created: an invalid set leaves nothing behind
    gold = read_gold_file(cfg.gold_file)
    items, fingerprint = select_items(set_folder, cfg.risks, cfg.max_items, cfg.subset_seed, gold)
    db = args.db or (Path(cfg.db) if cfg.db else default_db(set_folder))
    cache = db.parent / DATASETS_CACHE
    # A database left by a failed start would bind the next start to this set version (and refuse a
    # repaired set), so a failure removes whatever of these did not exist before, and nothing else.
    candidates = [*reversed(db.parent.parents), db.parent, db, *(Path(f"{db}{s}") for s in SIDE_FILES), cache,
                  db.parent / RESOLVED_CONFIG]
    ours = [path for path in candidates if not path.exists()]
    store = None
    try:
        store = Store(db)
        store.import_items(items, fingerprint)
        store.set_gold(gold)
        app = AnnotationApp(store, ImageSource(set_folder, cache), cfg)
        write_resolved_config(cfg, db.parent, name=RESOLVED_CONFIG)
        try:
            server = AnnotationServer((cfg.host, cfg.port), app)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {exc}") from exc
    except BaseException:
        if store is not None:
            store.close()
        remove_created(ours, cache)
        raise
    users = [u for u in store.list_users() if u["revoked_at"] is None]
    print(f"{len(items)} items ({len(gold)} gold) from {set_folder}; database {store.path}; {len(users)} active user(s)")
    if not users:
        print(f"no annotators yet: python -m annotation.cli add-user NAME --db {store.path}")
    stop_on_signals()
    announce(server)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        server.server_close()
        store.close()


def cmd_add_user(args: argparse.Namespace, cfg: AnnotateConfig) -> None:
    if args.set_folder is not None:
        check_schemas(args.set_folder)  # a mistyped --set must not create a database for no set
    store = Store(args.db or (Path(cfg.db) if cfg.db else default_db(require_set(args))))
    token = store.add_user(args.name, "admin" if args.admin else "annotator")
    print(f"user {args.name} created; token (shown once, give it privately; revoke with revoke-user):")
    print(token)


def cmd_revoke_user(args: argparse.Namespace, cfg: AnnotateConfig) -> None:
    open_store(args, cfg).revoke_user(args.name)
    print(f"user {args.name} revoked: token and sessions no longer work")


def cmd_list_users(args: argparse.Namespace, cfg: AnnotateConfig) -> None:
    for user in open_store(args, cfg).list_users():
        status = "revoked" if user["revoked_at"] else "active"
        print(f"{user['name']:<24} {user['role']:<10} {status:<8} {user['decisions']} decisions, {user['skips']} skips")


def cmd_report(args: argparse.Namespace, cfg: AnnotateConfig) -> None:
    store = open_store(args, cfg)
    report = agreement_report(store.items(), store.decisions(), store.adjudications(), cfg.tie_votes_needed())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        atomic_write_json(args.out, report)


def cmd_adjudicate(args: argparse.Namespace, cfg: AnnotateConfig) -> None:
    store = open_store(args, cfg)
    if args.pair_id is None:
        queue = disputed_items(store.items(), store.decisions(), store.adjudications(), cfg.tie_votes_needed())
        print(f"{len(queue)} disputed item(s)")
        for entry in queue:
            print(json.dumps(entry, ensure_ascii=False))
        return
    if args.answer is None or not args.by:
        raise ConfigError("settling an item needs --pair-id, --answer 0|1|tie and --by NAME")
    store.adjudicate(args.pair_id, args.answer, args.by, args.note)
    print(f"{args.pair_id}: adjudicated as {args.answer} by {args.by}")


def cmd_export(args: argparse.Namespace, cfg: AnnotateConfig) -> None:
    set_folder = require_set(args)
    store = open_store(args, cfg)
    out, summary = export_set(set_folder, store, cfg, args.out, overwrite=args.overwrite)
    write_resolved_config(cfg, store.path.parent, name="export_config.yaml")
    print(json.dumps({"folder": str(out), "counts": summary["counts"],
                      "krippendorff_alpha": summary["agreement"]["krippendorff_alpha"],
                      "cohen_kappa_mean": summary["agreement"]["cohen_kappa_mean"]}, indent=2))


COMMANDS = {
    "serve": cmd_serve, "add-user": cmd_add_user, "revoke-user": cmd_revoke_user, "list-users": cmd_list_users,
    "report": cmd_report, "adjudicate": cmd_adjudicate, "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    args = CLI.parse_args(argv, build_parser())
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def work() -> None:
        cfg = load_config(args)
        COMMANDS[args.command](args, cfg)

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
