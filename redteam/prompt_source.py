"""The curation prompt source ``redteam``: the prompts a red-team run found, fed back into curation.

``prompts: {source: redteam, path: runs/redteam/redteam, family: exposure}`` reads ``found_prompts.jsonl`` of a
``make redteam`` output folder (``path`` may also name that file or ``found_prompts.txt`` in it); ``family``, when
given, keeps the prompts found for that risk. The folder's ``found_prompts.json`` names the red-team suite that
wrote them; the suite is looked up and every prompt checked again before curation sees it: deduplicated, none may
ask for its risk by the suite's mention rules (DataError), and none may belong to any eval split by the suite's
rules, its text or what it asks for (LeakageError naming the prompts). A prompt file's ``eval_file`` check applies
on top (inference.prompts.load_prompts).

Registered by :mod:`redteam.plugin` (the entry point ``redteam`` of pyproject.toml, or a config's
``plugins: [redteam.plugin]``). Its prompts have no slots: a corrective may set a negative prompt or guidance,
not ``set_slots``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import ConfigError, DataError, LeakageError
from inference.prompts import PromptRecord, PromptSourceConfig, dedupe
from redteam.suite import redteam_suite

FOUND_JSONL = "found_prompts.jsonl"
FOUND_META = "found_prompts.json"


def found_folder(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def read_found(path: str | Path) -> tuple[dict, list[dict]]:
    """(the folder's metadata, its found-prompt records) of a red-team output folder."""
    folder = found_folder(path)
    meta_file, records_file = folder / FOUND_META, folder / FOUND_JSONL
    for needed in (meta_file, records_file):
        if not needed.is_file():
            raise DataError(f"prompts.path={path}: {needed} does not exist; point it at a make redteam output folder "
                            "(runs/<config>/redteam)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        records = [json.loads(line) for line in records_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"{folder}: found prompts are not valid JSON ({exc})") from exc
    if not meta.get("suite"):
        raise DataError(f"{meta_file} names no red-team suite")
    return meta, records


class RedteamPrompts:
    """The prompt source ``redteam``."""

    rewritable = False

    def check(self, config: PromptSourceConfig) -> None:
        if not config.path:
            raise ConfigError(f"prompts.source={config.source} needs prompts.path (a make redteam output folder)")

    def records(self, config: PromptSourceConfig, where: str) -> list[PromptRecord]:
        meta, found = read_found(config.path)
        suite = redteam_suite(meta["suite"])
        if meta.get("suite_options"):
            suite = suite.configured(**meta["suite_options"])
        if config.family:
            risks = [r.name for r in suite.risks()]
            if config.family not in risks:
                raise ConfigError(f"{where}: prompts.family={config.family!r} is no risk of red-team suite "
                                  f"{meta['suite']!r}; valid: {risks}")
            found = [r for r in found if r.get("risk") == config.family]
        records = dedupe([PromptRecord(r["prompt"], family=r.get("risk"), source=config.source) for r in found])
        asking = [r.prompt for r in records if r.family and suite.requests_risk(r.family, r.prompt)]
        if asking:
            raise DataError(f"{where}: {len(asking)} red-team prompt(s) ask for their risk, e.g. {asking[:3]}; "
                            "an attack prompt must not (re-run make redteam)")
        leaked = [r.prompt for r in records if suite.held_out(r.prompt)]
        if leaked:
            raise LeakageError(f"{where}: {len(leaked)} red-team prompt(s) belong to an eval split, e.g. {leaked[:3]}; "
                               "eval prompts must never reach curation or training")
        return records

    def render(self, record: PromptRecord, changes: dict[str, Any]) -> str:
        raise ConfigError(f"prompt {record.prompt!r} comes from a red-team run: its slots cannot be rewritten "
                          "(use a corrective's negative_prompt or guidance)")

    def paraphrases(self, record: PromptRecord, count: int) -> list[str]:
        return []

    def slot_values(self, slot: str) -> list[Any] | None:
        return None


PROMPT_SOURCE = RedteamPrompts()
