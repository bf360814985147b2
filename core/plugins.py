"""Named extension points of the pipeline, and the plug-ins that fill them.

The stages never import a plug-in (the synthetic world is one): a config names what it wants (``prompts:
{source: world}``, ``detector: {scorer: oracle}``, ``eval: {mode: synthetic}``) and the stage looks the name up
here. Kinds, and the interface a registered object provides:

* ``prompt_source``: :class:`inference.prompts.PromptSource` (``prompts.source`` of a curation risk);
* ``scorer``: a scorer class, ``cls(**options).score(images)`` (:mod:`inference.scorers`);
* ``eval_suite``: :class:`evals.suite.EvalSuite` (``eval.mode``: prompts, the scorer that reads the images,
  metrics, bars and report grids of a world with ground truth);
* ``redteam_suite``: :class:`redteam.suite.RedteamSuite` (``redteam.suite``: the risks, start prompts, mention rules
  and judge of the red-team attacks on a world with ground truth).

The built-in implementations (``file`` and ``templates`` prompts, the ``nudenet`` and ``clip`` scorers) are
registered by the modules that define them. A plug-in is a module with a ``register()`` function that calls
:func:`register` for each thing it provides. Plug-ins are found, the first time a name is looked up that is not
registered yet, in:

1. the entry points of the group ``safe_diffusion_dpo.plugins`` of the installed distributions (this project's
   ``pyproject.toml`` declares ``world = "synthetic_world.plugin:register"``; ``pip install -e .`` writes it);
2. the environment variable ``SAFE_DIFFUSION_DPO_PLUGINS``: comma-separated ``module`` or ``module:function``
   (a checkout used from ``PYTHONPATH`` without an install).

A config file may also list plug-in modules at its top level (``plugins: [synthetic_world.plugin]``);
:func:`core.config.load_stage_config` loads them before the stage's section is validated. A run whose config uses
only built-in names therefore imports no plug-in at all.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Mapping

from core.errors import ConfigError

ENTRY_POINT_GROUP = "safe_diffusion_dpo.plugins"
PLUGINS_ENV = "SAFE_DIFFUSION_DPO_PLUGINS"

# kind -> what an error message calls one
KINDS = {"prompt_source": "prompt source", "scorer": "scorer", "eval_suite": "eval suite",
         "redteam_suite": "red-team suite"}

HOW_TO_REGISTER = (
    f"a plug-in registers one with core.plugins.register(kind, name, target) from its register() function, "
    f"found through an entry point of the group {ENTRY_POINT_GROUP!r} (pyproject.toml, then `pip install -e .`), "
    f"the environment variable {PLUGINS_ENV} or a config file's top-level `plugins:` list (docs/ARCHITECTURE.md)"
)


@dataclass(frozen=True)
class Registration:
    """One registered name. ``target`` is the object itself, or ``"module:attribute"``, imported on first use
    (registering then imports nothing). ``requires``: the pip package the target needs, named in the error when
    it is not installed. ``info``: facts a stage may read without importing the target."""

    kind: str
    name: str
    target: Any
    requires: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


_registry: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
_resolved: dict[tuple[str, str], Any] = {}
_loaded_plugins: set[str] = set()
_discovered = False


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown plug-in kind {kind!r}; valid kinds: {list(KINDS)}")


def register(kind: str, name: str, target: Any, *, requires: str | None = None, **info: Any) -> None:
    """Register ``target`` as the ``kind`` named ``name``. Registering the same target again is a no-op; another
    target under a taken name is a ConfigError (two plug-ins may not claim one name)."""
    _check_kind(kind)
    new = Registration(kind, name, target, requires, dict(info))
    old = _registry[kind].get(name)
    if old is not None:
        if old.target is target or old.target == target:
            return
        raise ConfigError(f"{KINDS[kind]} {name!r} is registered twice: {old.target!r} and {target!r}")
    _registry[kind][name] = new


def registered_names(kind: str) -> list[str]:
    """Names registered so far, in registration order (no plug-in is loaded for it)."""
    _check_kind(kind)
    return list(_registry[kind])


def known_names(kind: str) -> list[str]:
    """Every name of ``kind`` once the installed and configured plug-ins are loaded."""
    discover()
    return registered_names(kind)


def is_registered(kind: str, name: str) -> bool:
    """True if ``name`` is registered, loading the plug-ins first when it is not yet."""
    _check_kind(kind)
    if name not in _registry[kind]:
        discover()
    return name in _registry[kind]


def registration(kind: str, name: str) -> Registration:
    """The registration of ``name``; an unknown name is a ConfigError listing the registered ones."""
    if not is_registered(kind, name):
        raise ConfigError(f"unknown {KINDS[kind]} {name!r}; registered {KINDS[kind]}s: {registered_names(kind)}; "
                          + HOW_TO_REGISTER)
    return _registry[kind][name]


def lookup(kind: str, name: str) -> Any:
    """The object registered as ``name`` (a ``"module:attribute"`` target imported now)."""
    entry = registration(kind, name)
    if not isinstance(entry.target, str):
        return entry.target
    key = (kind, name)
    if key not in _resolved:
        module_name, _, attribute = entry.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if entry.requires is None:
                raise
            raise ConfigError(
                f"{KINDS[kind]} {name!r} needs the package {entry.requires!r}, which is not importable ({exc}); "
                f"install it with `pip install {entry.requires}`"
            ) from exc
        _resolved[key] = getattr(module, attribute) if attribute else module
    return _resolved[key]


def load_plugin(spec: str) -> None:
    """Load the plug-in ``module`` (its ``register()``) or ``module:function`` once."""
    if spec in _loaded_plugins:
        return
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"plug-in {spec!r} cannot be imported ({exc}); check the module name and PYTHONPATH") from exc
    function = getattr(module, function_name or "register", None)
    if not callable(function):
        raise ConfigError(f"plug-in {spec!r} has no register() function")
    _loaded_plugins.add(spec)
    function()


def load_plugins(specs: Any, where: str) -> None:
    """Load every plug-in of a config's ``plugins:`` list."""
    if specs is None:
        return
    if not isinstance(specs, list) or not all(isinstance(s, str) and s for s in specs):
        raise ConfigError(f"{where}: plugins must be a list of module names (module or module:function), got {specs!r}")
    for spec in specs:
        load_plugin(spec)


def _entry_point_loaders() -> list[tuple[str, Callable[[], Any]]]:
    """(plug-in spec, loader) of every installed entry point of the group, once each (an editable install may
    expose the same distribution twice)."""
    out, seen = [], set()
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if point.value in seen:
            continue
        seen.add(point.value)
        out.append((point.value, point.load))
    return out


def discover() -> None:
    """Load the installed plug-ins (entry points) and those named in ``SAFE_DIFFUSION_DPO_PLUGINS``, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for spec, load in _entry_point_loaders():
        if spec in _loaded_plugins:
            continue
        try:
            function = load()
        except ImportError as exc:
            raise ConfigError(f"installed plug-in {spec!r} (entry point group {ENTRY_POINT_GROUP!r}) cannot be "
                              f"imported ({exc}); reinstall the distribution that declares it") from exc
        _loaded_plugins.add(spec)
        function()
    for spec in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
        load_plugin(spec)
