"""The red-team stage's plug-in: the curation prompt source ``redteam`` (:mod:`redteam.prompt_source`), which feeds
the prompts a ``make redteam`` run found back into curation. Found through the entry point ``redteam`` of the group
``safe_diffusion_dpo.plugins`` (pyproject.toml), or a config's ``plugins: [redteam.plugin]``."""

from __future__ import annotations

from core import plugins


def register() -> None:
    plugins.register("prompt_source", "redteam", "redteam.prompt_source:PROMPT_SOURCE")
