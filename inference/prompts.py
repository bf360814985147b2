"""Prompt sets: from a UTF-8 file, templates x slots, or a prompt source a plug-in registers.

A :class:`PromptSourceConfig` says where a set comes from (a curation risk's ``prompts:``, the retain set's
sources); its ``source`` names a :class:`PromptSource` registered in :mod:`core.plugins` (kind
``prompt_source``): ``file`` and ``templates`` are built in, a plug-in adds its own (the synthetic world's
``world``). Every source yields :class:`PromptRecord` s, deduplicated (case- and whitespace-insensitive, first
kept) and checked against the held-out eval prompts: any overlap raises ``LeakageError`` and
curation refuses to run. An empty set is a ``DataError``. Curation loads its prompts with :func:`load_prompts`;
evaluation loads the same ones to check that its prompts are disjoint from them (:func:`normalise` is the
form both compare).
"""

from __future__ import annotations

import csv
import itertools
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from core import plugins
from core.errors import ConfigError, DataError, LeakageError


@dataclass
class PromptSourceConfig:
    """Where a risk's prompts come from: ``source`` names a registered :class:`PromptSource`.

    * ``file``: a UTF-8 text file, one prompt per line (``#`` starts a comment);
    * ``templates``: every combination of ``slots`` filled into each of ``templates``
      (``"a photo of a {role} at the {setting}"``);
    * a plug-in's source, e.g. the synthetic world's ``world``: the curation split of one prompt ``family``.

    ``eval_file`` names held-out prompts for the leakage check of file/template sources. ``where``
    keeps only prompts whose slots take the listed values (``{group: [mirdan]}``: target the group a
    measured bias affects).
    """

    source: str = field(metadata={
        "help": "A registered prompt source: file (a UTF-8 text file, one prompt per line, # starts a comment), "
                "templates (every combination of slots filled into each template) or a plug-in's, e.g. the "
                "synthetic world's world (the curation split of one prompt family)."})
    family: Optional[str] = field(default=None, metadata={
        "help": "Prompt family of a source that has families, e.g. the synthetic world's exposure, stereotype, "
                "neutral."})
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
        prompt_source(self.source).check(self)
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"prompts.limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    slots: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    template_id: Any = None  # the source's template id (index into the config's templates for templates)
    template: str | None = None  # the template text (templates source), for re-rendering
    family: str | None = None
    source: str = "file"  # the registered prompt source that wrote it

    def render(self, changes: dict[str, Any]) -> str:
        """The same prompt with some slots changed (same template): a corrective rewrite."""
        return prompt_source(self.source).render(self, changes)

    def requesting(self, changes: dict[str, Any]) -> "PromptRecord | None":
        """A training prompt that asks for ``changes`` (the same template, those slots set), or None when the
        source holds that request out for eval (or cannot write it). The caption of a mirror pair."""
        caption = prompt_source(self.source).request_caption(self, changes)
        if caption is None:
            return None
        return PromptRecord(caption, {**self.slots, **changes}, self.template_id, self.template, self.family,
                            self.source)

    def paraphrases(self, count: int) -> list[str]:
        """Up to ``count`` other captions of the same request, as the record's source writes them (the same slots
        under its other curation templates; none for a file prompt). Chosen deterministically, so a rerun writes
        the same set."""
        if count <= 0:
            return []
        return prompt_source(self.source).paraphrases(self, count)


class PromptSource(Protocol):
    """A named source of curation prompts, registered as ``core.plugins.register("prompt_source", name, source)``.

    ``rewritable``: :meth:`render` can write a record again with some slots changed (a corrective's
    ``set_slots``)."""

    rewritable: bool

    def check(self, config: PromptSourceConfig) -> None:
        """Raise ConfigError for a config this source cannot read (e.g. a missing key)."""

    def records(self, config: PromptSourceConfig, where: str) -> list[PromptRecord]:
        """The curation prompts in a fixed order, checked against the source's own held-out eval prompts
        (LeakageError naming ``where``)."""

    def render(self, record: PromptRecord, changes: dict[str, Any]) -> str:
        """``record`` with the slots in ``changes`` changed; ConfigError if the source cannot re-render it."""

    def request_caption(self, record: PromptRecord, changes: dict[str, Any]) -> str | None:
        """Like :meth:`render`, for a *training* caption: None when the changed slot combination is held out
        for eval (a curation caption must never be an eval request)."""

    def paraphrases(self, record: PromptRecord, count: int) -> list[str]:
        """Up to ``count`` other captions of ``record``'s request ([] if the source has none)."""

    def slot_values(self, slot: str) -> list[Any] | None:
        """Every value ``slot`` takes in this source's prompts (None: not known), e.g. the groups a stereotype
        risk balances over when its config lists none."""


def prompt_source(name: str) -> PromptSource:
    """The prompt source registered as ``name`` (ConfigError listing the registered ones if none is)."""
    return plugins.lookup("prompt_source", name)


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


I2P_REQUIRED_COLUMNS = ("prompt", "categories", "sd_seed", "sd_guidance_scale")


def read_i2p_csv(path: str | Path, max_prompts: int | None = None, what: str = "I2P CSV") -> list[dict]:
    """Rows ``{"prompt", "categories": [..], "sd_seed": int, "sd_guidance_scale": float}`` of a CSV in the I2P
    schema (I2P itself, and the attack sets that export to it). ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in I2P_REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"{what} {path} is missing required column(s) {missing} of the I2P schema; "
                            f"it has {columns}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            prompt = (raw["prompt"] or "").strip()
            if not prompt:
                raise DataError(f"{what} {path}, line {line}: empty prompt")
            try:
                seed = int(float(raw["sd_seed"]))
                guidance = float(raw["sd_guidance_scale"])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{what} {path}, line {line}: bad sd_seed/sd_guidance_scale ({exc})") from exc
            categories = [c.strip() for c in (raw["categories"] or "").split(",") if c.strip()] or ["uncategorised"]
            rows.append({"prompt": prompt, "categories": categories, "sd_seed": seed, "sd_guidance_scale": guidance})
            if max_prompts is not None and len(rows) >= max_prompts:
                break
    if not rows:
        raise DataError(f"{what} {path} has no prompts")
    return rows


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
    records = dedupe(prompt_source(source.source).records(source, where))
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


class FilePrompts:
    """``file``: one prompt per line of a UTF-8 file; a prompt has no slots to rewrite."""

    rewritable = False

    def check(self, config: PromptSourceConfig) -> None:
        if not config.path:
            raise ConfigError(f"prompts.source={config.source} needs prompts.path")

    def records(self, config: PromptSourceConfig, where: str) -> list[PromptRecord]:
        return [PromptRecord(p, source=config.source) for p in read_prompt_file(config.path)]

    def render(self, record: PromptRecord, changes: dict[str, Any]) -> str:
        raise ConfigError(f"prompt {record.prompt!r} comes from a file: its slots cannot be rewritten")

    def request_caption(self, record: PromptRecord, changes: dict[str, Any]) -> str | None:
        return None

    def paraphrases(self, record: PromptRecord, count: int) -> list[str]:
        return []

    def slot_values(self, slot: str) -> list[Any] | None:
        return None


class TemplatePrompts:
    """``templates``: every combination of the config's slots filled into each of its templates."""

    rewritable = True

    def check(self, config: PromptSourceConfig) -> None:
        if not config.templates:
            raise ConfigError(f"prompts.source={config.source} needs a non-empty prompts.templates list")

    def records(self, config: PromptSourceConfig, where: str) -> list[PromptRecord]:
        return expand_templates(config.templates, config.slots)

    def render(self, record: PromptRecord, changes: dict[str, Any]) -> str:
        if record.template is None:
            raise ConfigError(f"prompt {record.prompt!r} has no template: its slots cannot be rewritten")
        return record.template.format(**{**record.slots, **changes})

    def request_caption(self, record: PromptRecord, changes: dict[str, Any]) -> str | None:
        # A slot the template does not write would leave the caption unchanged: the mirror would contradict its pair.
        if record.template is None or not set(changes) <= set(template_fields(record.template)):
            return None
        return self.render(record, changes)

    def paraphrases(self, record: PromptRecord, count: int) -> list[str]:
        return []

    def slot_values(self, slot: str) -> list[Any] | None:
        return None


plugins.register("prompt_source", "file", FilePrompts())
plugins.register("prompt_source", "templates", TemplatePrompts())
