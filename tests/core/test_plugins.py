"""The plug-in registry (core/plugins.py): names looked up by kind, plug-ins loaded on a miss, clear errors."""

from __future__ import annotations

import sys
import textwrap

import pytest

from core import plugins
from core.config import load_stage_config
from core.errors import ConfigError


@pytest.fixture
def registry(monkeypatch):
    """A registry of its own: the test's registrations and loaded plug-ins are dropped afterwards."""
    monkeypatch.setattr(plugins, "_registry", {kind: dict(names) for kind, names in plugins._registry.items()})
    monkeypatch.setattr(plugins, "_resolved", dict(plugins._resolved))
    monkeypatch.setattr(plugins, "_loaded_plugins", set(plugins._loaded_plugins))
    return plugins


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """An importable plug-in module that registers an eval suite and counts its register() calls."""
    (tmp_path / "toy_world_plugin.py").write_text(textwrap.dedent('''
        from core import plugins

        calls = []
        SUITE = object()


        def register():
            calls.append(1)
            plugins.register("eval_suite", "toy", "toy_world_plugin:SUITE")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toy_world_plugin"
    sys.modules.pop("toy_world_plugin", None)


def test_lookup_returns_the_registered_object_and_imports_a_string_target_on_first_use(registry):
    target = object()
    registry.register("scorer", "toy-object", target)
    assert registry.lookup("scorer", "toy-object") is target
    registry.register("prompt_source", "toy-string", "core.errors:DataError")
    from core.errors import DataError

    assert registry.lookup("prompt_source", "toy-string") is DataError


def test_registering_the_same_target_twice_is_a_no_op_and_another_target_is_refused(registry):
    registry.register("scorer", "toy", "a.module:Thing")
    registry.register("scorer", "toy", "a.module:Thing")
    with pytest.raises(ConfigError, match="registered twice"):
        registry.register("scorer", "toy", "another.module:Thing")


def test_unknown_name_lists_the_registered_ones_and_says_how_to_register(registry, monkeypatch):
    monkeypatch.setattr(plugins, "_discovered", True)  # no installed plug-in is loaded for this test
    registry.register("eval_suite", "toy-suite", object())
    with pytest.raises(ConfigError, match="unknown eval suite 'nope'.*'toy-suite'") as error:
        registry.lookup("eval_suite", "nope")
    message = str(error.value)
    assert plugins.ENTRY_POINT_GROUP in message and plugins.PLUGINS_ENV in message and "plugins:" in message
    with pytest.raises(ConfigError, match="unknown plug-in kind 'widget'"):
        registry.register("widget", "x", object())


def test_missing_package_of_a_target_names_what_to_install(registry):
    registry.register("scorer", "toy-missing", "no_such_package_anywhere.scorer:Scorer", requires="no-such-package")
    with pytest.raises(ConfigError, match="needs the package 'no-such-package'.*pip install no-such-package"):
        registry.lookup("scorer", "toy-missing")


def test_plugin_named_in_the_environment_is_loaded_on_a_miss(registry, plugin_module, monkeypatch):
    monkeypatch.setattr(plugins, "_discovered", False)
    monkeypatch.setattr(plugins, "_entry_point_loaders", lambda: [])
    monkeypatch.setenv(plugins.PLUGINS_ENV, f" {plugin_module} ")
    suite = registry.lookup("eval_suite", "toy")
    assert suite is sys.modules[plugin_module].SUITE
    registry.lookup("eval_suite", "toy")
    assert sys.modules[plugin_module].calls == [1]  # loaded once


def test_installed_entry_points_are_loaded_on_a_miss_only(registry, plugin_module, monkeypatch):
    import importlib

    loaded = []

    def loader():
        loaded.append(1)
        return importlib.import_module(plugin_module).register

    monkeypatch.setattr(plugins, "_discovered", False)
    monkeypatch.setattr(plugins, "_entry_point_loaders", lambda: [(f"{plugin_module}:register", loader)])
    monkeypatch.delenv(plugins.PLUGINS_ENV, raising=False)
    registry.register("scorer", "toy-builtin", object())
    registry.lookup("scorer", "toy-builtin")
    assert loaded == []  # a registered name loads no plug-in
    registry.lookup("eval_suite", "toy")
    assert loaded == [1]


def test_config_file_lists_plugins_to_load(registry, plugin_module, tmp_path):
    from evals.config import BootstrapConfig

    config = tmp_path / "c.yaml"
    config.write_text(f"plugins: [{plugin_module}]\neval: {{n_boot: 200}}\n")
    load_stage_config(BootstrapConfig, config, "eval")  # any dataclass: the plug-ins load first
    assert "toy" in registry.registered_names("eval_suite")
    config.write_text("plugins: toy_world_plugin\n")
    with pytest.raises(ConfigError, match="plugins must be a list of module names"):
        load_stage_config(BootstrapConfig, config, "eval")
    config.write_text("plugins: [no_such_plugin_module]\n")
    with pytest.raises(ConfigError, match="plug-in 'no_such_plugin_module' cannot be imported"):
        load_stage_config(BootstrapConfig, config, "eval")


def test_the_synthetic_world_registers_through_its_installed_entry_point():
    """The project's pyproject.toml declares the world; `pip install -e .` (make setup) writes the entry point."""
    from importlib import metadata

    values = {point.value for point in metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)}
    assert "synthetic_world.plugin:register" in values
    assert plugins.is_registered("prompt_source", "world")
    assert plugins.is_registered("scorer", "oracle")
    assert plugins.is_registered("eval_suite", "synthetic")
