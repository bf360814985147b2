"""The synthetic world's prompt families as a curation prompt source (``prompts: {source: world, family: ...}``;
registered by :mod:`synthetic_world.plugin`).

A config's ``family`` picks one family of :mod:`synthetic_world.prompts`; curation gets its ``curation`` split only,
checked against the family's held-out ``eval`` split by the world's own rules (template and slot combination, not
just the text) and by the shared text check. A record can be written again with some slots changed (a corrective's
``set_slots``) and under the family's other curation templates (caption variants).
"""

from __future__ import annotations

from typing import Any

from core.errors import ConfigError
from inference.prompts import PromptRecord, PromptSourceConfig, check_leakage
from synthetic_world import prompts as world_prompts
from synthetic_world.captions import caption_for
from synthetic_world.vocab import CATEGORICAL_ATTRIBUTES, PromptSpec

SOURCE_NAME = "world"


def world_prompt_records(family: str, split: str, source: str = SOURCE_NAME) -> list[PromptRecord]:
    """The world's prompt records of one family and split, as :class:`PromptRecord` s of ``source``."""
    records = []
    for rec in world_prompts.prompt_records(family=family, split=split):
        records.append(
            PromptRecord(
                prompt=rec["prompt"],
                slots={k: v for k, v in dict(rec.get("slots") or {}).items() if v is not None},
                template_id=rec.get("template_id"),
                family=rec.get("family", family),
                source=source,
            )
        )
    return records


def _spec_slots(slots: dict[str, Any]) -> dict[str, Any]:
    """The slots a caption renders (a record may carry others, e.g. a detector's label)."""
    return {k: v for k, v in slots.items() if k in PromptSpec.__dataclass_fields__}


def _as_dicts(records: list[PromptRecord]) -> list[dict]:
    return [{"prompt": r.prompt, "template_id": r.template_id, "slots": r.slots} for r in records]


class WorldPrompts:
    """The prompt source ``world``."""

    rewritable = True

    def check(self, config: PromptSourceConfig) -> None:
        if not config.family:
            raise ConfigError(f"prompts.source={config.source} needs prompts.family "
                              f"({', '.join(world_prompts.FAMILIES)})")
        if config.family not in world_prompts.FAMILIES:
            raise ConfigError(f"prompts.family: unknown world prompt family {config.family!r}; "
                              f"valid: {list(world_prompts.FAMILIES)}")

    def records(self, config: PromptSourceConfig, where: str) -> list[PromptRecord]:
        records = world_prompt_records(config.family, "curation", config.source)
        held_out = world_prompt_records(config.family, "eval", config.source)
        # The world's own check also compares held-out template/slot combinations, not just strings.
        world_prompts.check_no_leakage(_as_dicts(records), _as_dicts(held_out))
        check_leakage(records, [r.prompt for r in held_out], where)
        return records

    def render(self, record: PromptRecord, changes: dict[str, Any]) -> str:
        return caption_for(PromptSpec(**_spec_slots({**record.slots, **changes})), record.template_id)

    def request_caption(self, record: PromptRecord, changes: dict[str, Any]) -> str | None:
        slots = {k: v for k, v in {**record.slots, **changes}.items() if v is not None}
        if world_prompts.split_of(record.template_id, slots) == "eval":
            return None
        caption = self.render(record, changes)
        if caption == record.prompt or caption in world_prompts.eval_captions_of(_spec_slots(slots)):
            return None
        return caption

    def paraphrases(self, record: PromptRecord, count: int) -> list[str]:
        """The same slots under other curation templates (never an eval-only template, nor a text one writes)."""
        return world_prompts.paraphrase_captions(record.slots, record.template_id, count)

    def slot_values(self, slot: str) -> list[Any] | None:
        values = CATEGORICAL_ATTRIBUTES.get(slot)
        return list(values) if values is not None else None


PROMPT_SOURCE = WorldPrompts()
