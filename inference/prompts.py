"""Prompt sets: from the synthetic world, a UTF-8 file, or templates x slots.

A :class:`PromptSourceConfig` says where a set comes from (a curation risk's ``prompts:``, the retain set's
sources). Every source yields :class:`PromptRecord` s, deduplicated (case- and whitespace-insensitive, first
kept) and checked against the held-out eval prompts: any overlap raises ``LeakageError`` and
curation refuses to run. An empty set is a ``DataError``. Curation loads its prompts with :func:`load_prompts`;
evaluation loads the same ones to check that its prompts are disjoint from them (:func:`normalise` is the
form both compare).
"""

from __future__ import annotations

import itertools
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from core.errors import ConfigError, DataError, LeakageError


@dataclass
class PromptSourceConfig:
    """Where a risk's prompts come from.

    * ``world``: the synthetic world's prompt family (``family``), curation split only;
    * ``file``: a UTF-8 text file, one prompt per line (``#`` starts a comment);
    * ``templates``: every combination of ``slots`` filled into each of ``templates``
      (``"a photo of a {role} at the {setting}"``).

    ``eval_file`` names held-out prompts for the leakage check of file/template sources. ``where``
    keeps only prompts whose slots take the listed values (``{group: [mirdan]}``: target the group a
    measured bias affects).
    """

    source: Literal["world", "file", "templates"] = field(default="world", metadata={
        "help": "world: a synthetic-world prompt family (curation split only); file: a UTF-8 text file, one prompt "
                "per line (# starts a comment); templates: every combination of slots filled into each template."})
    family: Optional[str] = field(default=None, metadata={
        "help": "World prompt family (source world), e.g. exposure, stereotype, neutral."})
    path: Optional[str] = field(default=None, metadata={"help": "Prompt file (source file)."})
    templates: list[str] = field(default_factory=list, metadata={
        "help": "Prompt templates (source templates), e.g. 'a photo of a {role} at the {setting}'."})
    slots: dict[str, list[str]] = field(default_factory=dict, metadata={
        "help": "Values of each template slot (source templates), e.g. {role: [doctor, chef]}."})
    eval_file: Optional[str] = field(default=None, metadata={
        "help": "Held-out eval prompts the file/template prompts are checked against (leakage)."})
    where: dict[str, list[Any]] = field(default_factory=dict, metadata={
        "help": "Keep only prompts whose slots take the listed values, e.g. {group: [mirdan]} (target the group a "
                "measured bias affects)."})
    limit: Optional[int] = field(default=None, metadata={
        "help": "Keep an evenly spread N prompts (after dedupe and where); null: all."})

    def validate(self) -> None:
        if self.source == "world" and not self.family:
            raise ConfigError("prompts.source=world needs prompts.family (exposure, stereotype, association, misalignment, ...)")
        if self.source == "file" and not self.path:
            raise ConfigError("prompts.source=file needs prompts.path")
        if self.source == "templates" and not self.templates:
            raise ConfigError("prompts.source=templates needs a non-empty prompts.templates list")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"prompts.limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    slots: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    template_id: Any = None  # world template id, or index into the config's templates
    template: str | None = None  # the template text (templates source), for re-rendering
    family: str | None = None
    source: str = "file"  # world / file / templates

    def render(self, changes: dict[str, Any]) -> str:
        """The same prompt with some slots changed (same template): a corrective rewrite."""
        slots = {**self.slots, **changes}
        if self.source == "world":
            from synthetic_world.captions import caption_for
            from synthetic_world.vocab import PromptSpec

            known = {k: v for k, v in slots.items() if k in PromptSpec.__dataclass_fields__}
            return caption_for(PromptSpec(**known), self.template_id)
        if self.source == "templates" and self.template is not None:
            return self.template.format(**slots)
        raise ConfigError(f"prompt {self.prompt!r} comes from a file: its slots cannot be rewritten")

    def paraphrases(self, count: int) -> list[str]:
        """Up to ``count`` other captions of the same request: the same slots under other curation templates of
        the same source (world templates held out for eval are never used; a file prompt has none). Chosen
        deterministically, so a rerun writes the same set."""
        if count <= 0 or self.source == "file":
            return []
        if self.source == "world":
            from synthetic_world.prompts import paraphrase_captions

            return paraphrase_captions(self.slots, self.template_id, count)
        return []


def normalise(prompt: str) -> str:
    """The form used for dedupe and leakage: lower case, single spaces, no trailing punctuation."""
    return re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(" .")


def dedupe(records: list[PromptRecord]) -> list[PromptRecord]:
    seen: set[str] = set()
    out = []
    for record in records:
        key = normalise(record.prompt)
        if key and key not in seen:
            seen.add(key)
            out.append(record)
    return out


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and ``#`` comments skipped. Must be UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"prompt file {path} is not UTF-8: undecodable byte 0x{raw[exc.start]:02x} at byte {exc.start} "
            f"(line {line}); re-save it as UTF-8"
        ) from exc
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def expand_templates(templates: list[str], slots: dict[str, list[str]]) -> list[PromptRecord]:
    """Every combination of the slots a template uses, in a fixed order."""
    records = []
    for template_id, template in enumerate(templates):
        names = template_fields(template)
        missing = sorted(set(names) - set(slots))
        if missing:
            raise ConfigError(f"prompt template {template!r} uses slot(s) {missing} that prompts.slots does not define")
        for values in itertools.product(*(slots[n] for n in names)):
            filled = dict(zip(names, values))
            records.append(
                PromptRecord(template.format(**filled), filled, template_id, template, None, "templates")
            )
    return records


def world_prompts(family: str, split: str) -> list[PromptRecord]:
    """The synthetic world's prompt records of one family and split."""
    from synthetic_world import prompts as world

    records = []
    for rec in world.prompt_records(family=family, split=split):
        records.append(
            PromptRecord(
                prompt=rec["prompt"],
                slots={k: v for k, v in dict(rec.get("slots") or {}).items() if v is not None},
                template_id=rec.get("template_id"),
                family=rec.get("family", family),
                source="world",
            )
        )
    return records


def check_leakage(curation: list[PromptRecord], held_out: list[str], where: str) -> None:
    """Refuse if any curation prompt is also a held-out eval prompt (after normalisation)."""
    held = {normalise(p) for p in held_out}
    leaked = [r.prompt for r in curation if normalise(r.prompt) in held]
    if leaked:
        raise LeakageError(
            f"{where}: {len(leaked)} curation prompt(s) are eval prompts, e.g. {leaked[:3]}; "
            "remove them from the curation set (eval prompts must never reach curation or training)"
        )


def load_prompts(source: PromptSourceConfig, where: str) -> list[PromptRecord]:
    """The deduplicated, leakage-checked curation prompts of one risk."""
    if source.source == "world":
        from synthetic_world import prompts as world

        records = world_prompts(source.family, "curation")
        held_out = world_prompts(source.family, "eval")
        # The world's own check also compares held-out template/slot combinations, not just strings.
        world.check_no_leakage(
            [{"prompt": r.prompt, "template_id": r.template_id, "slots": r.slots} for r in records],
            [{"prompt": r.prompt, "template_id": r.template_id, "slots": r.slots} for r in held_out],
        )
        check_leakage(records, [r.prompt for r in held_out], where)
    elif source.source == "file":
        records = [PromptRecord(p, source="file") for p in read_prompt_file(source.path)]
    else:
        records = expand_templates(source.templates, source.slots)
    records = dedupe(records)
    if source.eval_file:
        check_leakage(records, read_prompt_file(source.eval_file), where)
    for slot, allowed in source.where.items():
        records = [r for r in records if r.slots.get(slot) in allowed]
    if source.limit is not None and len(records) > source.limit:
        # An evenly spread subset keeps the mix of templates and slot values of the full set.
        step = len(records) / source.limit
        records = [records[int(i * step)] for i in range(source.limit)]
    if not records:
        raise DataError(f"{where}: the prompt set is empty (source={source.source}); give at least one prompt")
    return records
