"""Canonical text and obfuscation-tolerant term matching (mitigations.normalise)."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from mitigations.normalise import TermMatcher, longest_first, normalise, term_pattern, term_units


@pytest.mark.parametrize("text, expected", [
    ("ＳＨＩＲＴＬＥＳＳ", "shirtless"),              # fullwidth forms
    ("𝐬𝐡𝐢𝐫𝐭𝐥𝐞𝐬𝐬", "shirtless"),                      # mathematical bold
    ("ѕһіrtlеѕѕ", "shirtless"),                       # Cyrillic look-alikes
    ("ΤΟΡLΕSS", "topless"),                          # Greek capitals
    ("shı\u200brt\u200dle\u00ads\ufeffs", "shirtless"),  # dotless i, zero-width space and joiner, soft hyphen, BOM
    ("nüdé", "nude"),                                # accents
    ("ꜱᴋᴜʟʟ", "skull"),                              # Latin small capitals
])
def test_normalise_undoes_lookalikes_and_invisible_characters(text, expected):
    assert normalise(text).text == expected


def test_normalise_keeps_the_origin_of_every_character():
    text = "a ｂ\u200bare"
    normal = normalise(text)
    assert normal.text == "a bare"
    start = normal.text.index("bare")
    assert normal.span_in_original(start, start + 4) == (2, 7)
    assert text[2:7] == "ｂ\u200bare"


def test_extra_confusables_extend_the_table():
    assert normalise("☐age").text == "☐age"
    assert normalise("☐age", {"☐": "c"}).text == "cage"


@pytest.mark.parametrize("text", [
    "bare torso", "BARE TORSO", "b a r e torso", "b.a.r.e t-o-r-s-o", "baretorso", "bare-torso", "b4r3 t0r$0",
    "baaare toooorso", "b_a_r_e   t_o_r_s_o", "bаre tοrso",
])
def test_a_phrase_matches_through_obfuscation(text):
    matcher = TermMatcher({"exposure": ["bare torso"]})
    hits = matcher.find(f"a doctor with a {text} at the beach")
    assert [h.key for h in hits] == ["exposure"]
    assert hits[0].text == text


@pytest.mark.parametrize("text", [
    "a doctor in a bar eating", "a barely visible torso", "a skullcap", "a person nodding", "a cagey look",
    "abare torso",
])
def test_no_match_inside_longer_words_or_across_word_pieces(text):
    matcher = TermMatcher({"t": ["bare torso", "skull", "nood", "cage"]})
    assert matcher.find(text) == []


def test_a_run_of_letters_needs_as_many_in_the_text():
    matcher = TermMatcher({"t": ["nood"]})
    assert matcher.find("n00d") and matcher.find("noood")
    assert not matcher.find("nod")


def test_wildcards_open_a_word_edge():
    matcher = TermMatcher({"t": ["nude*", "*skull"]})
    assert [h.text for h in matcher.find("nudes and numbskull")] == ["nude", "skull"]
    assert TermMatcher({"t": ["nude"]}).find("nudes") == []


def test_leetspeak_can_be_turned_off():
    assert TermMatcher({"t": ["suicide"]}).find("suicid3")
    assert not TermMatcher({"t": ["suicide"]}, leetspeak=False).find("suicid3")


def test_spans_are_in_the_original_text():
    text = "x ѕ\u200bk u.l.l y"
    (hit,) = TermMatcher({"symbol": ["skull"]}).find(text)
    assert text[hit.start:hit.end] == hit.text == "ѕ\u200bk u.l.l"


def test_longest_first_keeps_the_longer_of_overlapping_hits():
    hits = TermMatcher({"a": ["bare"], "b": ["with a bare torso"]}).find("a man with a bare torso")
    assert {h.key for h in hits} == {"a", "b"}
    assert [h.key for h in longest_first(hits)] == ["b"]


def test_a_term_without_letters_is_a_config_error():
    assert term_units("--") == []
    with pytest.raises(ConfigError, match="no letters"):
        term_pattern("--")


def test_a_long_adversarial_string_is_matched_quickly():
    import time

    matcher = TermMatcher({"t": ["bare torso", "shirtless"]})
    text = "b" + "@" * 5000 + " " + ". " * 5000 + "x"
    start = time.perf_counter()
    matcher.find(text)
    assert time.perf_counter() - start < 2.0
