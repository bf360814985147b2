"""Validated, typed configs: one dataclass per stage, loaded from a YAML section plus CLI overrides.

A config file in `configs/` has one top-level section per stage (``curate:``, ``train:``, ``eval:``,
...). Each stage loads only its own section into its dataclass with :func:`load_stage_config`.

Rules (so that a typo never silently falls back to a default):

* an unknown or misspelt key fails at once; the error names the key and lists the valid ones;
* values are type-checked against the dataclass annotations (nested dataclasses, ``list[...]``,
  ``dict[...]``, ``Optional[...]``, ``Literal[...]``);
* a dataclass may define ``validate(self)`` for value checks; it is called after loading;
* CLI overrides are ``dotted.key=value``; the value is parsed as YAML (``lr=1e-4``, ``x=[1,2]``)
  (``core.cli.StageCLI`` also reads them as ``--dotted.key value``);
* a field's help text is its ``metadata={"help": ...}`` (``--help`` of every entry point prints it);
* a renamed key keeps its old name as a deprecated alias: the dataclass lists it in ``RENAMED_KEYS``
  (old name -> :class:`Renamed`), and a config or override that uses it gets a ``FutureWarning``;
* a removed key is listed in ``REMOVED_KEYS`` (name -> why, where to read about it): a config that still sets it
  fails with that note rather than as an unknown key.

The resolved config is written next to every output with :func:`write_resolved_config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar, Union

import yaml

from core.errors import ConfigError
from core.io import atomic_write_text
from core.plugins import load_plugins

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert where lossless (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, bool) and bool in args:  # before a Literal member could read it as "on"/"off"
            return value
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            return _yaml_bool_choice(value, args, where)
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _coerce(k, key_tp, f"{where}.<key>"): _coerce(v, val_tp, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


# The unquoted words YAML 1.1 (PyYAML) reads as booleans, by the value they become.
_YAML_BOOL_WORDS = {False: ("no", "off", "false", "n"), True: ("yes", "on", "true", "y")}


def _yaml_bool_choice(value: bool, choices: tuple, where: str) -> str:
    """A string choice that YAML turned into a boolean (``mode: off`` arrives as False): the one choice
    spelled as such a word, else an error that says what happened (``False is not one of`` does not)."""
    words = _YAML_BOOL_WORDS[value]
    matches = [c for c in choices if isinstance(c, str) and c.lower() in words]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(
        f"{where}: got the boolean {str(value).lower()} (YAML reads an unquoted {' / '.join(words[:3])} as one), "
        f"which is not one of the choices {list(choices)}"
    )


@dataclasses.dataclass(frozen=True)
class Renamed:
    """The new name of a renamed config key; ``convert`` maps a value of the old key to the new key's (None: the
    value is kept). A dataclass lists its old names as ``RENAMED_KEYS: ClassVar[dict[str, Renamed]]``. A dotted
    ``new`` (``generation.steps``) moves the key into a section of the same dataclass."""

    new: str
    convert: Callable[[Any], Any] | None = None


def renamed_keys(tp: Any) -> dict[str, Renamed]:
    """Old name -> :class:`Renamed` of the dataclass ``tp`` (empty for anything else)."""
    tp = _strip_optional(tp)
    return getattr(tp, "RENAMED_KEYS", {}) if tp is not None and dataclasses.is_dataclass(tp) else {}


def _dotted(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _warn_renamed(old: str, new: str) -> None:
    warnings.warn(f"config key {old} is deprecated, use {new}", FutureWarning, stacklevel=4)


def _rename_old_keys(tp: Any, data: dict, where: str) -> dict:
    """``data`` (a mapping for dataclass ``tp``) with its old key names replaced by the new ones, each with a
    FutureWarning; an old and a new name of the same key together are a ConfigError."""
    renamed = renamed_keys(tp)
    if not renamed or not set(data) & set(renamed):
        return data
    data = dict(data)
    for old, spec in renamed.items():
        if old not in data:
            continue
        *sections, name = spec.new.split(".")
        node = data
        for section in sections:  # a moved key: copy the sections on its way, so the caller's data is kept
            child = node.get(section)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{_dotted(where, old)} moved to {_dotted(where, spec.new)}, but "
                                  f"{_dotted(where, section)} is not a section")
            node[section] = node = dict(child)
        if name in node:
            raise ConfigError(f"{_dotted(where, old)} is the old name of {_dotted(where, spec.new)}; "
                              f"set only {_dotted(where, spec.new)}")
        _warn_renamed(_dotted(where, old), _dotted(where, spec.new))
        value = data.pop(old)
        node[name] = spec.convert(value) if spec.convert else value
    return data


def _build(cls: type[T], data: dict, where: str) -> T:
    data = _rename_old_keys(cls, data, where)
    removed = getattr(cls, "REMOVED_KEYS", {})
    for name in sorted(set(data) & set(removed)):
        raise ConfigError(f"{_dotted(where, name)} was removed: {removed[name]}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}. Valid keys: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where or cls.__name__}: required key(s) missing: {missing}")
    obj = cls(**kwargs)
    return obj


def _validate_tree(obj: Any) -> None:
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _validate_tree(getattr(obj, f.name))
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _validate_tree(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            _validate_tree(item)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> (["train", "lr"], 1e-4). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML reads 1e-4 as a string (YAML 1.1 wants a dot); be kind and accept it as a float.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str], cls: type | None = None, where: str = "") -> dict:
    """``data`` with each ``key.sub=value`` override set. With ``cls`` (the dataclass ``data`` is for), an
    override may not create an entry of a mapping of sections (``risks.exposur.target_pairs=5`` under
    ``risks: dict[str, RiskConfig]``): that is a misspelt name, and left to the type check it would only
    surface as the new entry's missing required keys. Old key names (``RENAMED_KEYS``), in the data or in an
    override, become the new ones (``where``: the section, for the warning)."""
    data = _rename_old_keys(cls, dict(data), where)
    for text in overrides:
        path, value = parse_override(text)
        node, tp, section, full, known = data, cls, "", where, set()
        i = 0
        while i < len(path):
            part = path[i]
            spec = renamed_keys(tp).get(part)
            if spec is not None:
                _warn_renamed(_dotted(full, part), _dotted(full, spec.new))
                if i == len(path) - 1 and spec.convert:
                    value = spec.convert(value)
                path = [*path[:i], *spec.new.split("."), *path[i + 1:]]  # a moved key: its new sections too
                part = path[i]
            if i == len(path) - 1:
                node[part] = value
                break
            child = node.get(part)
            if child is None:
                _check_new_entry(tp, part, section, sorted(set(node) | known), text)
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            # A section the data leaves out holds its default entries.
            default = _default_of(tp, part) if part not in node else None
            known = set(default) if isinstance(default, dict) else set()
            member, full = _member_type(tp, part), _dotted(full, part)
            node[part] = _rename_old_keys(member, dict(child), full)
            node, tp, section = node[part], member, part
            i += 1
    return data


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return tp


def _member_type(tp: Any, key: str) -> Any:
    """The annotation of ``key`` inside a value annotated ``tp`` (a dataclass field or a mapping's values);
    None when not known."""
    tp = _strip_optional(tp)
    if tp is not None and dataclasses.is_dataclass(tp):
        return typing.get_type_hints(tp).get(key)
    if typing.get_origin(tp) is dict and typing.get_args(tp):
        return typing.get_args(tp)[1]
    return None


def _default_of(tp: Any, key: str) -> Any:
    """The default value of field ``key`` of dataclass ``tp`` (None if it has none or ``tp`` is no dataclass)."""
    tp = _strip_optional(tp)
    if tp is None or not dataclasses.is_dataclass(tp):
        return None
    for f in dataclasses.fields(tp):
        if f.name == key:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return None if f.default is dataclasses.MISSING else f.default
    return None


def _check_new_entry(tp: Any, key: str, section: str, configured: list[str], text: str) -> None:
    """Refuse an override that would create entry ``key`` of a mapping of dataclasses (see apply_overrides)."""
    tp = _strip_optional(tp)
    if typing.get_origin(tp) is not dict or not typing.get_args(tp) or key in configured:
        return
    if not dataclasses.is_dataclass(_strip_optional(typing.get_args(tp)[1])):
        return
    entry = section[:-1] if section.endswith("s") else f"{section} entry"
    raise ConfigError(
        f"override {text!r}: unknown {entry} {key!r}; configured {section}: {configured} "
        f"(a new {entry} is declared in the config file)"
    )


def config_from_dict(cls: type[T], data: dict | None, overrides: list[str] = (), where: str = "",
                     validate: bool = True) -> T:
    """Build ``cls`` from a plain mapping plus ``key=value`` overrides: keys and types checked, then (with
    ``validate``) the values, by each dataclass's ``validate()``."""
    merged = apply_overrides(data or {}, list(overrides), cls, where)
    obj = _build(cls, merged, where)
    if not validate:
        return obj
    try:
        _validate_tree(obj)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc
    return obj


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


# Every stage section that may appear at the top of a config file. Keeping the list here means a
# misspelt section ("trian:") fails loudly instead of being ignored. ``plugins`` lists plug-in modules to load
# (core.plugins), for a checkout whose installed entry points do not declare them. ``prompt_filter``, ``rewrite``
# and ``moderate`` are the mitigations' sections (mitigations.config), which may stand beside the stage sections.
KNOWN_SECTIONS = ("run", "plugins", "world", "curate", "train", "eval", "annotate", "bench", "time_to_lora", "erase",
                  "redteam", "serve", "prompt_filter", "rewrite", "moderate")


def load_stage_config(cls: type[T], path: str | Path | None, section: str, overrides: list[str] = (),
                      validate: bool = True) -> T:
    """Load ``section`` of the YAML file at ``path`` into ``cls``; overrides are relative to it, with or
    without the section's prefix (``seed=10`` or ``eval.seed=10``). ``validate=False`` checks keys and types
    only (no ``validate()`` value checks): what a documented command's keys are checked with."""
    prefix = f"{section}."
    overrides = [o[len(prefix):] if o.startswith(prefix) else o for o in overrides]
    data = read_yaml(path) if path is not None else {}
    unknown_sections = sorted(set(data) - set(KNOWN_SECTIONS))
    if unknown_sections:
        raise ConfigError(
            f"{path}: unknown top-level section(s) {unknown_sections}. Valid sections: {list(KNOWN_SECTIONS)}"
        )
    load_plugins(data.get("plugins"), f"{path}")
    section_data = data.get(section) or {}
    return config_from_dict(cls, section_data, overrides, where=section, validate=validate)


def config_name(path: str | Path | None) -> str:
    """The run name used for default output folders: ``configs/demo.yaml`` -> ``demo``."""
    return Path(path).stem if path else "default"


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_resolved_config(obj: Any, folder: str | Path, name: str = "resolved_config.yaml") -> Path:
    """Write the fully resolved config (defaults filled in) into an output folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    atomic_write_text(target, yaml.safe_dump(to_dict(obj), sort_keys=False))
    return target
