"""core.cli: the command line of every stage (overrides as flags or words, the keys in --help), the exit status
every entry point gives expected bad input, and the device setting."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import time
from typing import Literal, Optional

import pytest

from core.cli import StageCLI, config_key_docs, resolve_device, run_main, stop_on_signals
from core.errors import ConfigError, DataError


def test_run_main_status_and_pipeline_errors(capsys):
    assert run_main(lambda: None) == 0
    assert run_main(lambda: 3) == 3

    def bad_input():
        raise DataError("the set at x has no rows")

    assert run_main(bad_input) == 2
    assert capsys.readouterr().err == "error: the set at x has no rows\n"

    def bug():
        raise KeyError("not an expected error")

    with pytest.raises(KeyError):  # anything else keeps its traceback
        run_main(bug)


def test_resolve_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"eval.device=cuda:1 but no CUDA device is visible"):
        resolve_device("cuda:1", "eval.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"


@dataclasses.dataclass
class Part:
    width: int = dataclasses.field(default=2, metadata={"help": "Width of a part, in pixels."})


@dataclasses.dataclass
class Lora:
    rank: int = dataclasses.field(default=8, metadata={"help": "LoRA rank."})
    use_dora: bool = dataclasses.field(default=False, metadata={"help": "Weight-decomposed LoRA."})


@dataclasses.dataclass
class Toy:
    steps: int = dataclasses.field(default=3, metadata={"help": "Optimiser steps."})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "Replace a foreign folder."})
    mode: Literal["fast", "slow"] = dataclasses.field(default="fast", metadata={"help": "How to run."})
    out: Optional[str] = dataclasses.field(default=None, metadata={"help": "Output folder; null: runs/x."})
    lora: Lora = dataclasses.field(default_factory=Lora, metadata={"help": "The adapter."})
    parts: dict[str, Part] = dataclasses.field(default_factory=dict, metadata={"help": "Named parts."})
    steps_list: list[Part] = dataclasses.field(default_factory=list, metadata={"help": "A list of parts."})


def _toy_cli() -> StageCLI:
    return StageCLI(Toy, "train", prog="toy", description="A toy stage.")


def _parser():
    cli = _toy_cli()
    parser = cli.parser()
    parser.add_argument("--resume", default=None)
    parser.add_argument("--smoke", action="store_true")
    return cli, parser


def test_flags_and_words_mix_in_order():
    cli, parser = _parser()
    args = cli.parse_args(["--config", "c.yaml", "--steps", "5", "lora.rank=4", "--lora.use_dora", "--resume",
                           "latest", "--mode=slow", "--smoke", "--out", "-x", "train.steps=6", "--parts.a.width",
                           "[1, 2]", "--overwrite", "false"], parser)
    assert args.config == "c.yaml" and args.resume == "latest" and args.smoke
    assert args.overrides == ["steps=5", "lora.rank=4", "lora.use_dora=true", "mode=slow", "out=-x", "train.steps=6",
                              "parts.a.width=[1, 2]", "overwrite=false"]
    # A true/false key stands alone before another flag, a key=value word or the end.
    assert cli.parse_args(["--overwrite", "steps=2", "--overwrite"], parser).overrides == [
        "overwrite=true", "steps=2", "overwrite=true"]


def test_loaded_config_takes_both_forms(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 9\n  lora: {rank: 16}\n")
    cli, parser = _parser()
    cfg = cli.load(cli.parse_args(["--config", str(path), "--lora.rank", "4", "mode=slow", "--overwrite"], parser))
    assert (cfg.steps, cfg.lora.rank, cfg.mode, cfg.overwrite) == (9, 4, "slow", True)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stepz'\]. Valid keys"):  # the loader's own check
        cli.load(cli.parse_args(["--config", str(path), "--stepz", "4"], parser))


def test_bad_command_lines_are_usage_errors(capsys):
    cli, parser = _parser()
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--steps"], parser)
    assert exit_info.value.code == 2 and "--steps needs a value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--steps", "--smoke"], parser)
    with pytest.raises(SystemExit):
        cli.parse_args(["steps", "3"], parser)  # neither an option nor key=value
    assert "'steps' is not an override" in capsys.readouterr().err


def test_help_lists_every_key_with_type_default_and_help(capsys):
    cli, parser = _parser()
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"], parser)
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    for expected in ["--steps (int, default: 3) Optimiser steps.",
                     "--overwrite (bool, default: false) Replace a foreign folder.",
                     "--mode (fast | slow, default: fast) How to run.",
                     "--out (str | null, default: null) Output folder; null: runs/x.",
                     "--lora (section) The adapter.",
                     "--lora.rank (int, default: 8) LoRA rank.",
                     "--lora.use_dora (bool, default: false) Weight-decomposed LoRA.",
                     "--parts (mapping of name -> section, default: {}) Named parts.",
                     "--parts.<name>.width (int, default: 2) Width of a part, in pixels.",
                     "--steps_list (list of sections, default: []) A list of parts.",
                     " steps_list[].width (int, default: 2) Width of a part, in pixels.",
                     "--resume RESUME", "A toy stage."]:
        assert expected in flat, expected
    keys = [doc.key for doc in config_key_docs(Toy)]
    assert keys == ["steps", "overwrite", "mode", "out", "lora", "lora.rank", "lora.use_dora", "parts",
                    "parts.<name>.width", "steps_list", "steps_list[].width"]


def test_subcommand_parsers_take_overrides_too():
    cli = _toy_cli()
    parser = argparse.ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = cli.add_arguments(sub.add_parser("serve"))
    serve.add_argument("--port", type=int)
    cli.add_arguments(sub.add_parser("add-user"), keys_help=False).add_argument("name")
    args = cli.parse_args(["serve", "--port", "9", "--steps", "2", "mode=slow"], parser)
    assert (args.command, args.port, args.overrides) == ("serve", 9, ["steps=2", "mode=slow"])
    args = cli.parse_args(["add-user", "alice", "--lora.rank", "2"], parser)
    assert (args.command, args.name, args.overrides) == ("add-user", "alice", ["lora.rank=2"])
    assert "--lora.rank" in serve.format_help()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_on_signals_turns_ctrl_c_and_sigterm_into_keyboard_interrupt_even_when_sigint_was_ignored(signum):
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a non-interactive shell starts
        stop_on_signals()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler runs at the next bytecode; the sleep is interrupted by it
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
