"""Red-team suites: what ``redteam.suite`` names, the risks an attack aims at and the rules that judge it.

A red-team suite belongs to a world with ground truth (the synthetic world's is ``synthetic``), registered as
``core.plugins.register("redteam_suite", name, suite)``; the stage looks it up by name and never imports the world.
Per risk it gives:

* the **targets**: benign start prompts of the curation side (never an eval prompt), which do not ask for the risk;
* the **vocabulary**: the words and phrases the black-box search inserts and substitutes, in groups;
* the **mention rules**: :meth:`RedteamSuite.requests_risk` says whether a prompt asks for the risk (a prompt that
  does is never a successful attack), :meth:`RedteamSuite.admissible` whether it still is an attack on that risk
  (e.g. it still names the group whose association is attacked);
* the **judge**: the registered scorer (``reader``) reads every image, and :meth:`RedteamSuite.judge` turns the reads
  of one prompt into a continuous score (the black-box search's only signal) and a success;
* optionally a **differentiable detector** (images in [0, 1] -> a risk score per image) for the white-box attack;
* the **request prompts** (prompts that ask for the risk outright) for the attack on the prompt filter;
* the **held-out prompts** of every eval split, which no prompt found may equal (leakage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from core import plugins

# The score a detector returns for a batch of images, float (N, 3, H, W) in [0, 1] -> (N,), higher = more risk.
Detector = Callable[[Any], Any]


@dataclass(frozen=True)
class RiskInfo:
    """What the stage needs to know about one risk before attacking it.

    ``images_per_candidate``: images of one prompt (seeds) the judge reads together; a distribution risk such as a
    stereotype is judged over several images of one prompt, a per-image risk over one. ``description``: one line
    for the report.
    """

    name: str
    description: str
    images_per_candidate: int = 1


class RedteamSuite(Protocol):
    """The interface :mod:`redteam.attack` runs a world through."""

    reader: str  # the registered scorer that reads every image

    def configured(self, **options: Any) -> "RedteamSuite":
        """The suite with ``redteam.suite_options`` applied (TypeError for an option it does not take)."""

    def reader_options(self) -> dict[str, Any]:
        """Options of the reader scorer (e.g. the oracle's folder)."""

    def risks(self) -> list[RiskInfo]:
        """Every risk the suite can attack, in report order."""

    def targets(self, risk: str) -> list[str]:
        """The start prompts of ``risk`` in a fixed order (curation side; none asks for the risk)."""

    def vocabulary(self, risk: str) -> list[str] | dict[str, list[str]]:
        """The phrases the search inserts and substitutes (none of them asks for the risk): a list, or groups of
        interchangeable phrases by name (settings, activities, ...): a drawn phrase then replaces the phrase of its
        group that a prompt holds."""

    def requests_risk(self, risk: str, prompt: str) -> bool:
        """True when ``prompt`` asks for the risk by the world's mention rules."""

    def admissible(self, risk: str, prompt: str, target: str) -> bool:
        """True when ``prompt`` (derived from ``target``) is still an attack on ``risk``: it does not request the
        risk and keeps what the risk is about (the attacked group, the requested outfit, the named role)."""

    def judge(self, risk: str, prompt: str, reads: Sequence[dict]) -> tuple[float, bool]:
        """(score in [0, 1], success) of the reader's reads of one prompt's images."""

    def forbidden_words(self, risk: str) -> list[str]:
        """Words a projected (white-box) prompt may not contain: every word of the risk's request phrases."""

    def detector(self, risk: str, prompt: str, device: str) -> Detector | None:
        """A differentiable risk score of images of ``prompt`` (None: the white-box attack skips ``risk``)."""

    def request_prompts(self, risk: str) -> list[str]:
        """Prompts that ask for ``risk`` outright ([] if the risk cannot be asked for): the filter attack's
        targets."""

    def held_out_prompts(self) -> list[str]:
        """Every prompt of every eval split (the found prompts are checked against them)."""

    def held_out(self, prompt: str) -> bool:
        """True when ``prompt`` belongs to an eval split by the world's rules (its text, or what it asks for when
        the world holds requests out by content): such a prompt never reaches the prompt file or curation."""


def redteam_suite(name: str) -> RedteamSuite:
    """The red-team suite registered as ``name`` (ConfigError listing the registered ones if none is)."""
    return plugins.lookup("redteam_suite", name)
