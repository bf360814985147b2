"""Seeded prompt obfuscations (mitigations.obfuscate)."""

from __future__ import annotations

import itertools
import re

import pytest

from core.config import config_from_dict
from core.errors import ConfigError
from mitigations.obfuscate import (HOMOGLYPHS, LEETSPEAK, PUNCTUATION, TRANSFORMS, ZERO_WIDTH, ObfuscationConfig,
                                   obfuscate, obfuscate_with)

TEXT = "a shirtless doctor next to a skull at the beach"


def test_same_seed_same_output_other_seed_other_output():
    for transform in TRANSFORMS:
        first = obfuscate(TEXT, [transform], rate=0.6, seed=3)
        assert first == obfuscate(TEXT, [transform], rate=0.6, seed=3)
        assert first != TEXT
        assert any(obfuscate(TEXT, [transform], rate=0.6, seed=s) != first for s in range(4, 8))


def test_rate_zero_changes_nothing():
    assert obfuscate(TEXT, list(TRANSFORMS), rate=0.0, seed=1) == TEXT


def test_zero_width_only_inserts_invisible_characters():
    out = obfuscate(TEXT, ["zero_width"], rate=1.0)
    assert any(c in out for c in ZERO_WIDTH)
    assert "".join(c for c in out if c not in ZERO_WIDTH) == TEXT


def test_case_only_changes_case():
    out = obfuscate(TEXT, ["case"], rate=0.5, seed=2)
    assert out != TEXT and out.lower() == TEXT


def test_repeat_only_repeats_letters():
    out = obfuscate(TEXT, ["repeat"], rate=0.5, seed=2)
    assert len(out) > len(TEXT)
    assert re.sub(r"(.)\1+", r"\1", out) == re.sub(r"(.)\1+", r"\1", TEXT)


def test_spacing_and_punctuation_spell_words_out():
    spaced = obfuscate("shirtless", ["spacing"], rate=1.0)
    assert spaced == "s h i r t l e s s"
    punctuated = obfuscate("shirtless", ["punctuation"], rate=1.0, seed=5)
    separator = punctuated[1]
    assert separator in PUNCTUATION and punctuated == separator.join("shirtless")


@pytest.mark.parametrize("transform, table", [("leetspeak", LEETSPEAK), ("homoglyph", HOMOGLYPHS)])
def test_substitutions_come_from_their_table(transform, table):
    out = obfuscate("shirtless", [transform], rate=1.0, seed=4)
    assert len(out) == len("shirtless")
    for original, new in zip("shirtless", out):
        assert new == original or new in table[original]
    assert sum(a != b for a, b in zip("shirtless", out)) >= 5


def test_targets_limit_the_words_touched():
    out = obfuscate(TEXT, ["leetspeak", "spacing"], rate=1.0, targets=["Skull"])
    before, after = TEXT.split(" skull ")
    assert out.startswith(before + " ") and out.endswith(" " + after)
    middle = out[len(before) + 1:-len(after) - 1]
    assert middle.count(" ") == 4 and middle != "s k u l l"


def test_a_combination_does_not_depend_on_the_listed_order():
    outs = {obfuscate(TEXT, list(order), rate=0.5, seed=9)
            for order in itertools.permutations(["homoglyph", "case", "zero_width"])}
    assert len(outs) == 1


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="unknown obfuscation transform"):
        obfuscate(TEXT, ["rot13"])
    with pytest.raises(ConfigError, match="at least one transform"):
        obfuscate(TEXT, [])
    with pytest.raises(ConfigError, match="rate"):
        obfuscate(TEXT, ["case"], rate=1.5)
    with pytest.raises(ConfigError, match="rot13"):
        config_from_dict(ObfuscationConfig, {"transforms": ["rot13"]})


def test_the_config_dataclass_drives_the_same_function():
    config = config_from_dict(ObfuscationConfig, {"transforms": ["leetspeak"], "rate": 1.0, "seed": 2})
    assert obfuscate_with(TEXT, config) == obfuscate(TEXT, ["leetspeak"], 1.0, (), 2)
