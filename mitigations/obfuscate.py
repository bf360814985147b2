"""Seeded obfuscations of a prompt, the way people dodge a blocklist: for measuring filters and for red-teaming.

Transforms (:data:`TRANSFORMS`), each applied to the chosen words of a prompt (every word, or only the
``targets``) with probability ``rate`` per unit:

* ``leetspeak``: letters replaced by digits or symbols ("shirtless" -> "5h1rtl3ss");
* ``homoglyph``: letters replaced by look-alikes from other scripts and compatibility forms (Cyrillic, Greek,
  Armenian, fullwidth, mathematical bold);
* ``zero_width``: invisible characters inserted between letters (zero-width space / joiners, word joiner,
  soft hyphen, byte-order mark);
* ``spacing``: a word spelt out with spaces between its letters ("b a r e");
* ``punctuation``: a word spelt out with punctuation between its letters ("b.a.r.e", "b-a-r-e");
* ``case``: letters in random case;
* ``repeat``: letters repeated ("shiiirtlesss").

Several transforms combine in one fixed order (repeat, case, leetspeak, homoglyph, spacing, punctuation,
zero_width), so a combination is the same whatever order it is listed in. The output depends only on the
text, the transforms, the rate, the targets and the seed.

The look-alike table here is written from how the characters look, independently of the filter's
normalisation table (:mod:`mitigations.normalise`), so measuring one with the other is not circular by
construction.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Sequence

from core.errors import ConfigError

# Application order of a combination: case before the substitutions, because swapping the case of a look-alike
# can change what it looks like (Greek "υ" reads as "u", its capital "Υ" as "Y").
TRANSFORMS = ("repeat", "case", "leetspeak", "homoglyph", "spacing", "punctuation", "zero_width")

LEETSPEAK = {
    "a": ("4", "@"), "b": ("8",), "e": ("3",), "g": ("9", "6"), "i": ("1", "!"), "l": ("1", "|"), "o": ("0",),
    "s": ("5", "$"), "t": ("7", "+"), "z": ("2",),
}
HOMOGLYPHS = {
    "a": ("а", "α", "ａ", "𝐚"), "b": ("Ь", "ｂ", "𝐛"), "c": ("с", "ϲ", "ｃ"), "d": ("ԁ", "ｄ", "𝐝"),
    "e": ("е", "ｅ", "𝐞", "ė"), "f": ("ｆ", "𝐟"), "g": ("ɡ", "ｇ"), "h": ("һ", "ｈ", "հ"), "i": ("і", "ı", "ｉ", "ι"),
    "j": ("ј", "ｊ"), "k": ("κ", "к", "ｋ"), "l": ("ӏ", "ℓ", "ｌ"), "m": ("м", "ｍ"), "n": ("ո", "ｎ", "𝐧"),
    "o": ("о", "ο", "օ", "ｏ"), "p": ("р", "ρ", "ｐ"), "q": ("ԛ", "ｑ"), "r": ("г", "ｒ", "𝐫"), "s": ("ѕ", "ｓ", "ꜱ"),
    "t": ("т", "τ", "ｔ"), "u": ("υ", "ս", "ｕ"), "v": ("ν", "ѵ", "ｖ"), "w": ("ԝ", "ω", "ｗ"), "x": ("х", "χ", "ｘ"),
    "y": ("у", "γ", "ｙ"), "z": ("ᴢ", "ｚ"),
}
ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff")
PUNCTUATION = (".", "-", "_", "*", "·", "~")

_WORD = re.compile(r"\w+(?:[-']\w+)*")


@dataclass
class ObfuscationConfig:
    """One obfuscation: which transforms, how much, of which words, with which seed."""

    transforms: list[str] = field(default_factory=lambda: ["leetspeak"], metadata={
        "help": f"Transforms to apply together, any of {list(TRANSFORMS)}."})
    rate: float = field(default=0.5, metadata={
        "help": "Probability per unit: per letter (leetspeak, homoglyph, case, repeat), per gap between letters "
                "(zero_width) or per word (spacing, punctuation)."})
    targets: list[str] = field(default_factory=list, metadata={
        "help": "Obfuscate only these words (case-insensitive); empty: every word."})
    seed: int = field(default=0, metadata={"help": "Seed; the output is a function of text, settings and seed."})

    def validate(self) -> None:
        check_transforms(self.transforms)
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"obfuscation rate must be in [0, 1], got {self.rate}")


def check_transforms(transforms: Sequence[str]) -> list[str]:
    unknown = sorted(set(transforms) - set(TRANSFORMS))
    if unknown:
        raise ConfigError(f"unknown obfuscation transform(s) {unknown}; valid: {list(TRANSFORMS)}")
    if not transforms:
        raise ConfigError("an obfuscation needs at least one transform")
    return [t for t in TRANSFORMS if t in transforms]  # the fixed order


def _substitute(word: str, table: dict, rate: float, rng: random.Random) -> str:
    out = []
    for char in word:
        options = table.get(char.lower())
        out.append(rng.choice(options) if options and rng.random() < rate else char)
    return "".join(out)


def _apply(word: str, transform: str, rate: float, rng: random.Random) -> str:
    if transform == "leetspeak":
        return _substitute(word, LEETSPEAK, rate, rng)
    if transform == "homoglyph":
        return _substitute(word, HOMOGLYPHS, rate, rng)
    if transform == "case":
        return "".join(c.swapcase() if rng.random() < rate else c for c in word)
    if transform == "repeat":
        return "".join(c * rng.randint(2, 3) if c.isalpha() and rng.random() < rate else c for c in word)
    if transform in ("spacing", "punctuation"):
        if len(word) < 2 or rng.random() >= rate:
            return word
        separator = " " if transform == "spacing" else rng.choice(PUNCTUATION)
        return separator.join(word)
    if transform == "zero_width":
        out = [word[0]] if word else []
        for char in word[1:]:
            if rng.random() < rate:
                out.append(rng.choice(ZERO_WIDTH))
            out.append(char)
        return "".join(out)
    raise ConfigError(f"unknown obfuscation transform {transform!r}; valid: {list(TRANSFORMS)}")


def obfuscate(text: str, transforms: Sequence[str], rate: float = 0.5, targets: Sequence[str] = (),
              seed: int = 0) -> str:
    """``text`` with ``transforms`` applied to its words (or only to the words in ``targets``)."""
    order = check_transforms(transforms)
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"obfuscation rate must be in [0, 1], got {rate}")
    wanted = {t.lower() for t in targets}
    # A string seed is hashed with SHA-512 by random.Random: the same on every run and every machine.
    rng = random.Random(f"{seed}|{rate}|{','.join(order)}|{text}")

    def one(match: re.Match) -> str:
        word = match.group(0)
        if wanted and word.lower() not in wanted:
            return word
        for transform in order:
            word = _apply(word, transform, rate, rng)
        return word

    return _WORD.sub(one, text)


def obfuscate_with(text: str, config: ObfuscationConfig) -> str:
    return obfuscate(text, config.transforms, config.rate, config.targets, config.seed)
