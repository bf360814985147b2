"""Every command in the code blocks of README.md and docs/*.md is one that works, checked without running it.

* ``make <target> [VAR=value ...]``: the target exists in the Makefile; for a target whose recipe runs a module
  (``make curate/train/eval/annotate/bench``) the module's command line is built as make builds it and checked
  as below.
* ``python -m <module> ...`` (also after ``accelerate launch ... -m``): the module imports; for a stage entry
  point (a ``CLI`` = ``core.cli.StageCLI``) the command line parses and every override key exists in the stage's
  config dataclass, through the loader's own key and type checks (``load_stage_config(..., validate=False)``),
  under its current name; for ``preference_sets.cli <sub>`` and ``annotation.cli <sub>`` the subcommand exists
  and its flags parse.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import shlex
import warnings
from pathlib import Path

import pytest

from core.cli import StageCLI
from core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAKEFILE = REPO / "Makefile"


class CommandError(AssertionError):
    """A documented command that would not work, and why."""


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line of the fenced and the indented code blocks, continuation lines joined."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, fenced, pending, start = [], False, "", 0
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ") or pending):
            continue
        if not pending:
            start = number
        text = line.strip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        out.append((start, pending + text))
        pending = ""
    return out


def documented_commands() -> list[tuple[str, list[str]]]:
    """("FILE:LINE", argv) of every make / python -m / accelerate launch -m line."""
    found = []
    for path in DOCS:
        for number, text in code_lines(path):
            if not re.match(r"(make\s|python -m\s|accelerate launch\s)", text):
                continue
            found.append((f"{path.relative_to(REPO)}:{number}", shlex.split(text, comments=True)))
    return found


# --- the Makefile ------------------------------------------------------------------------------------------------

def makefile_targets() -> dict[str, list[str]]:
    """target -> its recipe lines."""
    targets: dict[str, list[str]] = {}
    current = None
    for line in MAKEFILE.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+):(?!=)", line)
        if match:
            current = match.group(1)
            targets[current] = []
        elif line.startswith("\t") and current is not None:
            targets[current].append(line.strip())
        elif line and not line.startswith("#"):
            current = None
    return targets


def makefile_defaults() -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^([A-Z_]+) \?= ?(.*)$", MAKEFILE.read_text(), re.M)}


def make_as_python(argv: list[str]) -> tuple[str, list[str]] | None:
    """``make TARGET VAR=value ...`` -> (module, argv) of the module its recipe runs, or None (no module)."""
    variables = dict(token.split("=", 1) for token in argv if re.match(r"^[A-Z_]+=", token))
    targets = [token for token in argv if not re.match(r"^[A-Z_]+=", token)]
    recipes = makefile_targets()
    if len(targets) != 1:
        raise CommandError(f"make {' '.join(argv)}: expected one target, got {targets}")
    if targets[0] not in recipes:
        raise CommandError(f"make target {targets[0]!r} is not in the Makefile (targets: {sorted(recipes)})")
    defaults = makefile_defaults()
    for line in recipes[targets[0]]:
        match = re.search(r"\$\((?:LAUNCH|PY)\)(?: -m)? ([\w.]+)(.*)$", line)
        if match:
            def value(name: re.Match) -> str:
                text = variables.get(name.group(1), defaults.get(name.group(1), ""))
                return "PLACEHOLDER" if "$(" in text else text

            return match.group(1), shlex.split(re.sub(r"\$\(([A-Z_]+)\)", value, match.group(2)))
    return None


# --- python -m ---------------------------------------------------------------------------------------------------

def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@contextlib.contextmanager
def _usage_errors(what: str):
    try:
        yield
    except SystemExit as exc:  # argparse's exit on a bad command line
        raise CommandError(f"{what}: the command line does not parse (exit {exc.code})") from exc


def check_python(module: str, argv: list[str]) -> None:
    what = f"python -m {module} {' '.join(argv)}"
    try:
        entry = importlib.import_module(module)
    except ImportError as exc:
        raise CommandError(f"{what}: module {module} does not import: {exc}") from exc
    cli = getattr(entry, "CLI", None)
    parser = entry.build_parser() if hasattr(entry, "build_parser") else None
    subcommands = _subparsers(parser) if parser is not None else {}
    if subcommands:
        if not argv or argv[0] not in subcommands:
            raise CommandError(f"{what}: no subcommand {argv[:1]}; {module} has {sorted(subcommands)}")
        if not isinstance(cli, StageCLI):  # flags of the subcommand only
            with _usage_errors(what):
                _, unknown = subcommands[argv[0]].parse_known_args(argv[1:])
            if unknown:
                raise CommandError(f"{what}: {argv[0]} does not take {unknown}")
    if isinstance(cli, StageCLI):
        with _usage_errors(what):
            args = cli.parse_args(argv, parser)
        args.config = args.config or cli.config_default
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # an old key name
            try:
                cli.load(args, validate=False)
            except (ConfigError, FutureWarning) as exc:
                raise CommandError(f"{what}: {exc}") from exc


def check_command(argv: list[str]) -> None:
    if argv[0] == "make":
        python = make_as_python(argv[1:])
        if python is not None:
            check_python(*python)
    elif argv[:2] == ["python", "-m"]:
        check_python(argv[2], argv[3:])
    elif argv[:2] == ["accelerate", "launch"]:
        at = argv.index("-m")
        check_python(argv[at + 1], argv[at + 2:])
    else:
        raise CommandError(f"not a command this test knows: {argv}")


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 40
    kinds = {argv[0] for _, argv in COMMANDS}
    assert kinds == {"make", "python", "accelerate"}


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command(where, argv, monkeypatch):
    monkeypatch.chdir(REPO)  # commands run from the repository root
    check_command(argv)


@pytest.mark.parametrize("command, problem", [
    ("make trian", "not in the Makefile"),
    ('make train ARGS="max_trian_steps=3"', r"unknown key\(s\) \['max_trian_steps'\]"),
    ('make eval ARGS="--prompts_per_famly 3"', "prompts_per_famly"),
    ('make curate CONFIG=configs/sd15.yaml ARGS="risks.exposur.target_pairs=5"', "unknown risk 'exposur'"),
    ('make eval CONFIG=configs/sd15.yaml ARGS="model_path=/data/sd"', "model_path is deprecated"),
    ('make eval ARGS="steps=10"', r"eval\.steps is deprecated, use eval\.generation\.steps"),
    ("make annotate SET=x ARGS=overlap=two", "expected an integer"),
    ("python -m training.trian --config configs/demo.yaml", "does not import"),
    ("python -m training.train --config configs/demo.yaml --max_train_steps", "does not parse"),
    ("python -m benchmarks.bench 'archz=[sd15]'", "archz"),
    ("python -m preference_sets.cli valdate runs/x", "no subcommand"),
    ("python -m preference_sets.cli split runs/x --out y", "does not parse"),  # --fractions is required
    ("python -m preference_sets.cli stats runs/x --bogus 1", "does not take"),
    ("python -m annotation.cli adjudicat --set s", "no subcommand"),
    ("python -m annotation.cli adjudicate --set s --pair-idd x", "pair-idd"),
])
def test_a_wrong_command_is_caught(command, problem, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(CommandError, match=problem):
        check_command(shlex.split(command))
