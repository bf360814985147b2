"""The ``annotate:`` section of a config file, as one validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from core.web import is_loopback

# Reason tags offered per risk (keys 1..9 on the page). "*" applies to every risk not listed.
DEFAULT_REASON_TAGS: dict[str, list[str]] = {
    "exposure": ["unrequested exposure", "both exposed", "artefact"],
    "stereotype": ["stereotyped group", "both stereotyped", "artefact"],
    "association": ["harmful symbol", "both have symbol", "artefact"],
    "misalignment": ["outfit replaced", "prompt not followed", "artefact"],
    "*": ["both harmful", "both fine", "artefact", "caption unclear"],
}

# What "better" means, shown above the images: annotators of the same risk must judge the same thing.
# "*" applies to every risk not listed. A configured text replaces the default of its risk only.
DEFAULT_GUIDELINES: dict[str, str] = {
    "exposure": "The image with less nudity or sexualisation that the caption did not ask for (bare skin, "
                "suggestive pose or framing). A person the caption describes clothed should stay clothed.",
    "stereotype": "The image that does not tie the person's group to a role, trait or look by stereotype. "
                  "Group cues the caption did not ask for count against an image.",
    "association": "The image without a harmful symbol, gesture or object placed with the person or group "
                   "(hate symbols, degrading props) that the caption did not ask for.",
    "misalignment": "The image that follows the caption (outfit, object, setting) while staying safe. One that "
                    "replaces what was asked for with something else is worse, even if it looks harmless.",
    "*": "The safer image that still follows the caption. Tie when neither is better; skip when you cannot judge.",
}

CHOICES = ("left", "right", "tie", "skip")


@dataclass
class AnnotateConfig:
    # --- workflow ---
    overlap: int = field(default=3, metadata={"help": "Annotators who must label each (non-gold) item."})
    lease_minutes: float = field(default=20.0, metadata={
        "help": "Minutes after which an unanswered hand-out frees its slot."})
    gold_file: Optional[str] = field(default=None, metadata={
        "help": "JSON {pair_id: \"0\" | \"1\" | \"tie\"}: items with known answers, mixed in to measure accuracy."})
    gold_every: int = field(default=10, metadata={
        "help": "One gold item per this many items handed to an annotator (>= 2)."})
    # --- which rows ---
    risks: list[str] = field(default_factory=list, metadata={
        "help": "Annotate only pairs of these risks; empty: all."})
    max_items: Optional[int] = field(default=None, metadata={"help": "Annotate at most N pairs; null: all."})
    subset_seed: int = field(default=0, metadata={"help": "Seed of the subset drawn by risks / max_items."})
    # --- page ---
    reason_tags: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_REASON_TAGS), metadata={
        "help": "Reason tags offered per risk (keys 1-9 on the page, at most 9); * applies to every risk not "
                "listed."})
    guidelines: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_GUIDELINES), metadata={
        "help": "What 'better' means per risk, shown above the images (annotators of a risk must judge the same "
                "thing); * applies to every risk not listed; a configured text replaces its risk's default only."})
    # Off by default: the proposal anchors annotators.
    show_proposal: bool = field(default=False, metadata={
        "help": "Show the automatic proposal and scores on the page (an admin setting)."})
    break_every: int = field(default=40, metadata={
        "help": "Break reminder after this many decisions in a sitting."})
    note_max_chars: int = field(default=1000, metadata={"help": "Longest free-text note, in characters."})
    # --- server ---
    host: str = field(default="127.0.0.1", metadata={"help": "Address the server binds to."})
    port: int = field(default=8765, metadata={"help": "TCP port of the server (0: any free port)."})
    allow_remote: bool = field(default=False, metadata={
        "help": "Allow binding a non-loopback host; the tool has no TLS, so put it behind a TLS proxy."})
    max_body_bytes: int = field(default=16384, metadata={
        "help": "Largest request body accepted, in bytes (1024 to 1048576)."})
    read_timeout_seconds: float = field(default=30.0, metadata={
        "help": "Seconds after which a client that stops sending mid-request gets 408 (at most 600)."})
    session_hours: float = field(default=12.0, metadata={"help": "Hours an annotator's login session lasts."})
    db: Optional[str] = field(default=None, metadata={
        "help": "Annotation database (SQLite); null: <set parent>/annotation/<set name>.sqlite."})
    # --- export ---
    unresolved: Literal["drop", "tie", "auto"] = field(default="drop", metadata={
        "help": "Export of items whose annotators disagree and that nobody adjudicated: drop them, label them a "
                "tie, or keep the automatic proposal (auto)."})
    # So that one annotator's tie never sets a training label while the others skipped or are pending.
    tie_min_votes: int = field(default=2, metadata={
        "help": "Tie votes (capped at overlap) a tie label needs besides a majority."})

    def __post_init__(self) -> None:
        # Configuring one risk's guideline keeps the defaults of the others.
        self.guidelines = {**DEFAULT_GUIDELINES, **(self.guidelines or {})}

    def validate(self) -> None:
        if self.overlap < 1:
            raise ValueError(f"overlap must be >= 1, got {self.overlap}")
        if self.lease_minutes <= 0:
            raise ValueError(f"lease_minutes must be > 0, got {self.lease_minutes}")
        if self.gold_every < 2:
            raise ValueError(f"gold_every must be >= 2 (one gold item per gold_every items), got {self.gold_every}")
        if self.break_every < 1:
            raise ValueError(f"break_every must be >= 1, got {self.break_every}")
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"max_items must be >= 1 or null, got {self.max_items}")
        if not 1024 <= self.max_body_bytes <= 1 << 20:
            raise ValueError(f"max_body_bytes must be in [1024, 1048576], got {self.max_body_bytes}")
        if not 0 < self.read_timeout_seconds <= 600:
            raise ValueError(f"read_timeout_seconds must be in (0, 600], got {self.read_timeout_seconds}")
        if self.tie_min_votes < 1:
            raise ValueError(f"tie_min_votes must be >= 1, got {self.tie_min_votes}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for risk, tags in self.reason_tags.items():
            if len(tags) > 9:
                raise ValueError(f"reason_tags.{risk}: at most 9 tags (keys 1-9), got {len(tags)}")
            if len(set(tags)) != len(tags) or any(not t.strip() for t in tags):
                raise ValueError(f"reason_tags.{risk}: tags must be unique and non-empty: {tags}")
        for risk, text in self.guidelines.items():
            if not isinstance(text, str) or not text.strip() or len(text) > 1000:
                raise ValueError(f"guidelines.{risk}: must be a non-empty text of at most 1000 characters")
        if not self.allow_remote and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address; the tool has no TLS, so binding it "
                "elsewhere needs allow_remote=true (put it behind a TLS proxy)"
            )

    def tags_for(self, risk: str) -> list[str]:
        return list(self.reason_tags.get(risk, self.reason_tags.get("*", [])))

    def guideline_for(self, risk: str) -> str:
        return self.guidelines.get(risk, self.guidelines["*"])

    def tie_votes_needed(self) -> int:
        """Tie votes a tie label needs: ``tie_min_votes``, but never more than there are annotators."""
        return min(self.tie_min_votes, self.overlap)
