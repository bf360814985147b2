"""What every entry point shares: its command line, the exit status of expected bad input, and the device setting.

A stage's command line is a :class:`StageCLI` over its config dataclass: ``--config FILE`` plus overrides of the
stage's section, as ``--key value`` flags or ``key=value`` words, mixed in any order (dotted keys for nested
fields: ``--lora.rank 4``, ``risks.exposure.target_pairs=5``; values read as YAML, as in the config file).
``--help`` lists every key with its type, default and help (the field's ``metadata["help"]``).

An entry point's ``main`` puts its work in a function and returns ``run_main(work)``: a
:class:`core.errors.PipelineError` (bad config, missing model, bad data, leakage) is printed as
``error: <message>`` on stderr with exit status 2 and no traceback; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import textwrap
import types
import typing
from typing import Any, Callable, Literal, Union

import torch
import yaml

from core.config import _member_type, load_stage_config, renamed_keys, to_dict
from core.errors import ConfigError, PipelineError


def run_main(work: Callable[[], int | None]) -> int:
    """``work()``'s exit status (0 when it returns None), or 2 after printing a PipelineError's message."""
    try:
        status = work()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if status is None else status


def stop_on_signals() -> None:
    """Make ctrl-c (SIGINT) and SIGTERM (``kill``, ``docker stop``, systemd) both raise KeyboardInterrupt in the main
    thread, so a long-running server stops through its own cleanup (socket closed, logs flushed). Set explicitly
    because a process started as a background job of a non-interactive shell inherits SIGINT ignored, and Python
    then leaves it ignored."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def resolve_device(setting: str, key: str = "device") -> str:
    """A ``device`` setting as a torch device name: "auto" is "cuda" when a GPU is visible, else "cpu"; any
    other name is kept, and a CUDA device when none is visible is a ConfigError naming the config ``key``."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}={setting} but no CUDA device is visible")
    return setting


# --- stage command lines ------------------------------------------------------------------------------------------

class StageCLI:
    """The command line of a stage whose config is the dataclass ``cls``, read from the ``section`` of a file.

    ``parser()`` gives an argparse parser with ``--config`` and the override words, whose ``--help`` ends with
    every config key; the entry point adds its own options to it. ``parse_args(argv, parser)`` takes the
    overrides out of ``argv`` (``--key value``, ``--key=value``, ``key=value``, in their order) before argparse
    sees it, so ``args.overrides`` holds them as ``key=value`` words; ``load(args)`` is the validated config.
    """

    def __init__(self, cls: type, section: str, *, prog: str, description: str = "",
                 config_default: str | None = None, config_required: bool = False) -> None:
        # config_default: what the entry point reads without --config (shown in --help; the entry point applies it)
        self.cls, self.section, self.prog, self.description = cls, section, prog, description
        self.config_default, self.config_required = config_default, config_required

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description, allow_abbrev=False,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.add_arguments(parser)
        return parser

    def add_arguments(self, parser: argparse.ArgumentParser, keys_help: bool = True) -> argparse.ArgumentParser:
        """``--config`` and the override words on ``parser`` (or a subparser); with ``keys_help``, the list of
        config keys as its help's epilog."""
        default = f" (default: {self.config_default})" if self.config_default else ""
        parser.add_argument("--config", default=None, required=self.config_required, metavar="FILE",
                            help=f"YAML config file; its {self.section}: section is read{default}")
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help=f"overrides of the {self.section}: section, also as --key value"
                                 + (" (keys below)" if keys_help else ""))
        if keys_help:
            parser.epilog = self.keys_help()
            parser.formatter_class = argparse.RawDescriptionHelpFormatter
        return parser

    def keys_help(self, width: int = 100) -> str:
        lines = textwrap.wrap(f"config keys of the {self.section}: section (set them in the --config file, or here "
                              "as --key value or key=value; dotted for nested keys, values read as YAML):", width)
        lines.append("")
        for doc in config_key_docs(self.cls):
            flag = doc.key if "[]" in doc.key else f"--{doc.key}"
            lines.append(f"  {flag}  ({doc.type}{'' if doc.default is None else ', default: ' + doc.default})")
            if doc.help:
                lines += textwrap.wrap(doc.help, width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                       break_on_hyphens=False, break_long_words=False)
        return "\n".join(lines)

    def parse_args(self, argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None
                   ) -> argparse.Namespace:
        parser = parser or self.parser()
        argv = sys.argv[1:] if argv is None else list(argv)
        rest, overrides = split_overrides(argv, _own_parser(parser, argv), self.cls, self.section)
        args = parser.parse_args(rest)
        stray = getattr(args, "overrides", None) or []
        if stray:  # words that are neither options nor key=value
            parser.error(f"{stray[0]!r} is not an override: write key=value or --key value")
        args.overrides = overrides
        return args

    def load(self, args: argparse.Namespace, extra: list[str] = (), validate: bool = True) -> Any:
        """The stage's config from ``args.config`` and ``args.overrides`` (then ``extra``); ``validate=False``:
        keys and types only (core.config.load_stage_config)."""
        return load_stage_config(self.cls, args.config, self.section, [*args.overrides, *extra], validate=validate)


def _own_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser whose options ``argv`` uses: the subcommand's, for a parser with subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for token in argv:
                if not token.startswith("-"):
                    return action.choices.get(token, parser)
    return parser


def split_overrides(argv: list[str], parser: argparse.ArgumentParser, cls: type, section: str = ""
                    ) -> tuple[list[str], list[str]]:
    """(what ``parser`` parses, the overrides as ``key=value`` words in their order) of ``argv``.

    An option of ``parser`` (with its value) stays; any other ``--key value`` / ``--key=value`` and every
    ``key=value`` word is an override. A key that takes true/false may stand alone (``--overwrite``: true)."""
    own = parser._option_string_actions
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if token.startswith("-") and name in own:
            rest.append(token)
            if "=" not in token and own[name].nargs != 0 and i + 1 < len(argv):
                rest.append(argv[i + 1])
                i += 1
        elif token.startswith("--") and len(token) > 2:
            key = name[2:]
            if "=" in token:
                value = token.split("=", 1)[1]
            else:
                following = argv[i + 1] if i + 1 < len(argv) else None
                takes_value = following is not None and not following.startswith("--")
                if _takes_bool(cls, key, section) and (not takes_value or "=" in following):
                    value = "true"
                elif not takes_value:
                    parser.error(f"--{key} needs a value: --{key} VALUE or {key}=VALUE")
                else:
                    value = following
                    i += 1
            overrides.append(f"{key}={value}")
        elif "=" in token and not token.startswith("-"):
            overrides.append(token)
        else:
            rest.append(token)
        i += 1
    return rest, overrides


def _takes_bool(cls: type, key: str, section: str) -> bool:
    """Whether the config key ``key`` (dotted, with or without the section prefix) accepts true/false."""
    parts = key.split(".")
    if section and parts[0] == section and len(parts) > 1:
        parts = parts[1:]
    tp: Any = cls
    for part in parts:
        spec = renamed_keys(tp).get(part)
        for name in spec.new.split(".") if spec else [part]:  # an old key name: where it lives now
            tp = _member_type(tp, name)
            if tp is None:
                return False
    return tp is bool or (typing.get_origin(tp) in (Union, types.UnionType) and bool in typing.get_args(tp))


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One config key as ``--help`` lists it."""

    key: str  # dotted; "[]" marks the fields of a list's items (set with the whole list)
    type: str
    default: str | None  # None: a section (its keys follow)
    help: str


def config_key_docs(cls: type, prefix: str = "") -> list[KeyDoc]:
    """Every key of the config dataclass ``cls`` and of the dataclasses under it, in field order."""
    docs = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, key = hints[f.name], f"{prefix}{f.name}"
        help_text = " ".join(f.metadata.get("help", "").split())
        inner = _strip_none(tp)
        if dataclasses.is_dataclass(inner):
            optional = inner is not tp
            docs.append(KeyDoc(key, "section" + (" | null" if optional else ""),
                               _default_text(f) if optional else None, help_text))
            docs += config_key_docs(inner, f"{key}.")
            continue
        origin, args = typing.get_origin(inner), typing.get_args(inner)
        item = _strip_none(args[-1]) if args else None
        if origin is dict and dataclasses.is_dataclass(item):
            docs.append(KeyDoc(key, "mapping of name -> section", _default_text(f), help_text))
            docs += config_key_docs(item, f"{key}.<name>.")
        elif origin is list and dataclasses.is_dataclass(item):
            docs.append(KeyDoc(key, "list of sections", _default_text(f), help_text))
            docs += config_key_docs(item, f"{key}[].")
        else:
            docs.append(KeyDoc(key, type_label(tp), _default_text(f), help_text))
    return docs


def _strip_none(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return tp


def type_label(tp: Any) -> str:
    """An annotation as ``--help`` writes it: ``int``, ``str | null``, ``sigmoid | hinge``, ``dict[str, int]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(type_label(a) for a in args)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (list, tuple):
        return f"list[{type_label(args[0])}]" if args else "list"
    if origin is dict:
        return f"dict[{type_label(args[0])}, {type_label(args[1])}]" if args else "dict"
    if tp is Any:
        return "any"
    if dataclasses.is_dataclass(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def _default_text(f: dataclasses.Field, limit: int = 80) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"

    text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("...").strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."
