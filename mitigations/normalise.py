"""Text normalisation and obfuscation-tolerant term matching, shared by the prompt filter and the rewriter.

A blocklist that compares raw strings is beaten by "suicid3", "b.a.r.e", a Cyrillic "а" or a zero-width space.
Matching here happens in two steps:

1. :func:`normalise` maps the prompt, character by character, to a canonical form and remembers where each
   output character came from: compatibility decomposition (NFKD: fullwidth forms, mathematical letters,
   ligatures, circled letters become plain letters), accents and other combining marks dropped, invisible
   characters (zero-width spaces and joiners, soft hyphens, direction marks, fillers) dropped, look-alike
   letters of other scripts (Cyrillic, Greek, Armenian, Latin small capitals and hooked letters) mapped to the
   Latin letter they imitate, then case folded.
2. :class:`TermMatcher` compiles each term into a pattern over that form in which every letter also accepts its
   leetspeak stand-ins ("3" for "e", "@" for "a"), may repeat ("shiiirtless"), and may be separated from the
   next one by spacing or punctuation ("b a r e", "b.a.r.e", "bare-chested" = "bare chested" =
   "barechested"). A match must start and end at a word edge (not inside a longer word): "skull" does not
   match "skullcap"; a term written with a trailing ``*`` ("nud*") may continue into a longer word, and one with
   a leading ``*`` may start inside one.

A run of k equal letters in a term needs at least k in the text, so "nood" does not match "nod". Spans of a
match are reported in the original text, so a caller can log or cut out exactly what matched.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

from core.errors import ConfigError

# Characters that render as nothing (or as blank space that is not whitespace) and are not format characters
# (category Cf, all of which are dropped): Hangul fillers, the braille blank, the combining grapheme joiner.
INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f")
DROPPED_CATEGORIES = frozenset({"Cf", "Mn", "Me"})  # format characters, combining marks

# Letters of other scripts that look like a Latin letter, by the letter they imitate. Upper-case forms are
# mapped before case folding, because a capital and its small form may imitate different letters (Greek
# capital eta looks like "H", small eta like "n"). Latin variants with a recognisable base letter (dotless i,
# small capitals, hooked or barred letters) are found through their Unicode names (_latin_base).
CONFUSABLES: Mapping[str, str] = {
    # Cyrillic capitals
    "А": "a", "В": "b", "С": "c", "Е": "e", "Н": "h", "І": "i", "Ј": "j", "К": "k", "М": "m", "О": "o",
    "Р": "p", "Ѕ": "s", "Т": "t", "Х": "x", "У": "y", "Ү": "y", "Ԁ": "d", "Ԛ": "q", "Ԝ": "w", "Ӏ": "l",
    "Ь": "b", "Ѵ": "v", "Ꙅ": "s", "Ԍ": "g",
    # Cyrillic small letters
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "ӏ": "l",
    "м": "m", "п": "n", "о": "o", "р": "p", "ԛ": "q", "г": "r", "ѕ": "s", "т": "t", "у": "y", "ү": "y",
    "х": "x", "ԝ": "w", "ь": "b", "ѵ": "v", "ꙅ": "s", "ԍ": "g", "ћ": "h", "ђ": "h",
    # Greek capitals
    "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m", "Ν": "n", "Ο": "o",
    "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x", "Ϲ": "c", "Ϳ": "j",
    # Greek small letters
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "σ": "o", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ϳ": "j", "ς": "s",
    # Armenian
    "օ": "o", "ո": "n", "ս": "u", "հ": "h", "ց": "g", "զ": "q", "ա": "w", "Տ": "s", "Օ": "o", "Ս": "u",
    # Latin letters named after a Greek one, which look like the Latin letter
    "ɑ": "a", "ɩ": "i", "ɛ": "e", "ɸ": "o", "ʋ": "u", "Ɑ": "a", "Ɩ": "l", "Ɛ": "e",
    # Letter-like symbols NFKD leaves alone
    "ℓ": "l", "℮": "e", "ⅼ": "l", "ǀ": "l", "ꓲ": "i", "ꓳ": "o", "ꓢ": "s", "ꓐ": "b", "ꓮ": "a",
}

# Leetspeak: the digits and symbols that stand in for each letter. These characters count as letters inside a
# term (they are never a separator), so "b4re" and "$hirtless" match.
LEET: Mapping[str, str] = {
    "a": "4@", "b": "86", "e": "3€", "g": "96", "i": "1!|", "l": "1|", "o": "0", "s": "5$", "t": "7+", "z": "2",
}
LEET_SYMBOLS = "".join(sorted(set("".join(LEET.values())) - set("0123456789")))

# "LATIN SMALL LETTER DOTLESS I", "LATIN LETTER SMALL CAPITAL Z", "LATIN SMALL LETTER SCRIPT G",
# "LATIN SMALL LETTER O WITH STROKE": a Latin letter with a modifier that keeps its shape. Turned and reversed
# letters are left out: they do not read as the letter.
_LATIN_NAME = re.compile(r"^LATIN (?:SMALL |CAPITAL )?LETTER (?:SMALL CAPITAL |DOTLESS |SCRIPT )?([A-Z])(?: WITH .+)?$")


@lru_cache(maxsize=4096)
def _latin_base(char: str) -> str | None:
    """The Latin letter a non-ASCII Latin variant is written on ("ı" dotless i -> "i", "ᴢ" small capital
    z -> "z", "ɡ" script g -> "g"), from its Unicode name; None for anything else."""
    if char.isascii() or not char.isalpha():
        return None
    match = _LATIN_NAME.match(unicodedata.name(char, ""))
    return match.group(1).lower() if match else None


@dataclass(frozen=True)
class NormalisedText:
    """``text`` in canonical form; ``origin[i]`` is the index in the original string of ``text[i]``."""

    text: str
    origin: tuple[int, ...]

    def span_in_original(self, start: int, end: int) -> tuple[int, int]:
        """The original-text span that produced ``text[start:end]`` (``end > start``)."""
        return self.origin[start], self.origin[end - 1] + 1


def _canonical(char: str, confusables: Mapping[str, str]) -> str:
    char = confusables.get(char, char)
    folded = char.casefold()
    out = []
    for piece in folded:
        piece = confusables.get(piece, piece)
        out.append(_latin_base(piece) or piece)
    return "".join(out)


def normalise(text: str, extra_confusables: Mapping[str, str] | None = None) -> NormalisedText:
    """The canonical form of ``text`` (see the module docstring), with the origin of every character.

    ``extra_confusables`` adds look-alike mappings (one character -> the letters it imitates) to
    :data:`CONFUSABLES`."""
    confusables = {**CONFUSABLES, **extra_confusables} if extra_confusables else CONFUSABLES
    chars: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        if char in INVISIBLE:
            continue
        if char in confusables:  # before decomposition: some look-alikes decompose into other letters
            pieces = char
        else:
            pieces = unicodedata.normalize("NFKD", char)
        for piece in pieces:
            if unicodedata.category(piece) in DROPPED_CATEGORIES or piece in INVISIBLE:
                continue
            for out in _canonical(piece, confusables):
                chars.append(out)
                origin.append(index)
    return NormalisedText("".join(chars), tuple(origin))


# --- term patterns ----------------------------------------------------------------------------------------------

# A separator between two letters of a term: any character that is neither a letter, a digit nor a leetspeak
# symbol (spacing, punctuation, "_"). Keeping separators and letters disjoint keeps the pattern linear.
_SEPARATOR = rf"(?:(?![{re.escape(LEET_SYMBOLS)}])[\W_])"
_GAP = _SEPARATOR + "{0,10}"  # room for stacked separators: "b · - · a"
_NOT_AFTER_LETTER = r"(?<![^\W\d_])"
_NOT_BEFORE_LETTER = r"(?![^\W\d_])"


def term_units(term: str) -> list[tuple[str, int]]:
    """(letter, run length) of a term's letters and digits in canonical form; spacing and punctuation in the
    term are ignored (a term's words may be written together or apart in a prompt)."""
    canonical = normalise(term.strip("*")).text
    units: list[tuple[str, int]] = []
    for char in canonical:
        if not char.isalnum():
            continue
        if units and units[-1][0] == char:
            units[-1] = (char, units[-1][1] + 1)
        else:
            units.append((char, 1))
    return units


def _letter_class(letter: str, leetspeak: bool) -> str:
    stand_ins = LEET.get(letter, "") if leetspeak else ""
    return "[" + re.escape(letter + stand_ins) + "]"


def term_pattern(term: str, leetspeak: bool = True) -> str:
    """The regular expression (over :func:`normalise` output) that matches ``term`` and its obfuscations."""
    units = term_units(term)
    if not units:
        raise ConfigError(f"term {term!r} has no letters or digits to match")
    parts = []
    for letter, run in units:
        cls = _letter_class(letter, leetspeak)
        parts.append(f"{cls}(?:{_GAP}{cls}){{{run - 1},}}")
    body = _GAP.join(parts)
    start = "" if term.lstrip().startswith("*") else _NOT_AFTER_LETTER
    end = "" if term.rstrip().endswith("*") else _NOT_BEFORE_LETTER
    return start + body + end


@dataclass(frozen=True)
class TermHit:
    """One match: the ``key`` (category) and ``term`` of the list that matched, and the span in the original
    text."""

    key: str
    term: str
    start: int
    end: int
    text: str  # the original characters of the span


class TermMatcher:
    """Finds the terms of several named lists (``{key: [term, ...]}``) in prompts, obfuscations included."""

    def __init__(self, terms: Mapping[str, Sequence[str]], leetspeak: bool = True,
                 extra_confusables: Mapping[str, str] | None = None):
        self.extra_confusables = dict(extra_confusables or {})
        self._patterns: list[tuple[str, str, re.Pattern]] = []
        for key, values in terms.items():
            for term in values:
                self._patterns.append((key, term, re.compile(term_pattern(term, leetspeak))))

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def normalise(self, text: str) -> NormalisedText:
        return normalise(text, self.extra_confusables)

    def find(self, text: str, normalised: NormalisedText | None = None) -> list[TermHit]:
        """Every hit of every term, in text order (overlapping hits of different terms all kept)."""
        normalised = normalised or self.normalise(text)
        hits = []
        for key, term, pattern in self._patterns:
            for match in pattern.finditer(normalised.text):
                start, end = normalised.span_in_original(match.start(), match.end())
                hits.append(TermHit(key, term, start, end, text[start:end]))
        hits.sort(key=lambda h: (h.start, -(h.end - h.start)))
        return hits

    def keys_found(self, text: str) -> set[str]:
        return {hit.key for hit in self.find(text)}


def longest_first(hits: Iterable[TermHit]) -> list[TermHit]:
    """Non-overlapping hits, preferring the longer one where two overlap, in text order."""
    chosen: list[TermHit] = []
    for hit in sorted(hits, key=lambda h: (-(h.end - h.start), h.start)):
        if all(hit.end <= other.start or hit.start >= other.end for other in chosen):
            chosen.append(hit)
    return sorted(chosen, key=lambda h: h.start)
