"""Eval suites: what ``eval.mode`` names besides ``i2p``.

An eval suite is a world with ground truth that a plug-in brings to the eval (the synthetic world's is
``synthetic``): its held-out prompts, the registered scorer that reads each image, its metrics and bars, and how the
report shows a read. It is registered as ``core.plugins.register("eval_suite", name, suite)``; the eval looks it up by
``eval.mode`` and never imports the plug-in. ``i2p`` (a real model on an I2P-format CSV and benign captions,
:mod:`evals.i2p`) is built in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from core import plugins

if TYPE_CHECKING:  # the config module imports this one
    from evals.config import EvalConfig
    from evals.metric_rows import ModelImages

I2P_MODE = "i2p"


class EvalSuite(Protocol):
    """The interface :mod:`evals.evaluate` runs a suite through.

    ``reader``: the registered scorer whose labels are each image's read (every metric reads them).
    """

    reader: str

    def check_config(self, cfg: EvalConfig) -> None:
        """Raise ConfigError for eval settings the suite cannot run (e.g. an unknown prompt family)."""

    def scorer_options(self, name: str, cfg: EvalConfig) -> dict[str, Any] | None:
        """The options of scorer ``name`` when the suite provides it (its reader; a filter baseline may use it
        too), from the eval config; None for a scorer the suite does not provide."""

    def prompt_records(self, cfg: EvalConfig) -> list[dict]:
        """The prompt records of every split in ``cfg.splits`` (in that order), each with ``prompt``, ``family``
        and ``eval_split``, after the suite's own leakage checks (LeakageError) and before any model is loaded."""

    def summary(self, items, records: list[dict], results: dict[str, ModelImages], boot,
                policy: dict[str, str], split: str) -> dict:
        """``{"metrics": rows, "stereotype": section or None, "bars": [...]}`` of one eval split, rows and bars
        tagged with ``split`` (:mod:`evals.metric_rows` builds rows and bars)."""

    def describe_read(self, read: dict) -> str:
        """A short caption of one read, under its image in the report's grids."""

    def grid_title(self, family: str) -> str:
        """The title of the report's image grid of one prompt family."""

    def notes(self, cfg: EvalConfig) -> list[str]:
        """Notes the summary prints first (e.g. what a filter baseline's scorer is worth here)."""


def eval_suite(mode: str) -> EvalSuite:
    """The eval suite registered as ``mode`` (ConfigError listing the registered ones if none is)."""
    return plugins.lookup("eval_suite", mode)


def eval_suite_of(cfg: EvalConfig) -> EvalSuite | None:
    """The eval suite ``cfg.mode`` names; None for the built-in ``i2p`` mode."""
    return None if cfg.mode == I2P_MODE else eval_suite(cfg.mode)
