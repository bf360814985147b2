"""Build a CLIP-format BPE tokenizer (vocab.json + merges.txt) for a closed vocabulary, offline.

Stock ``transformers.CLIPTokenizer`` loads the result, so diffusers pipelines need nothing of ours.
Each vocabulary word becomes a single token through a left-to-right chain of merges; any other
text still tokenizes, falling back to byte-level characters (all 256 are in the vocabulary).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 reversible byte -> printable unicode map (same table the tokenizer uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def words_of(texts: list[str]) -> list[str]:
    """Lower-cased words and punctuation tokens, as CLIP's pre-tokenizer splits them (roughly)."""
    found: dict[str, None] = {}
    for text in texts:
        for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()):
            found[word] = None
    return list(found)


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges on the word list until every word is one token.

    The merges are learnt the way BPE training does (repeatedly merge the most frequent adjacent pair
    everywhere), so CLIPTokenizer's rank-ordered merging reproduces each word as a single token.
    (A per-word left-to-right chain does not: a lower-ranked pair from another word, e.g. ``ci`` of
    "city", would split "scientist".) Words are first split as CLIP's pre-tokenizer splits them.
    """
    byte_map = bytes_to_unicode()
    base = list(byte_map.values())
    vocab_list = base + [ch + "</w>" for ch in base]
    seen = set(vocab_list)
    sequences = []
    for word in words_of(list(words)):
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        symbols[-1] = symbols[-1] + "</w>"
        if len(symbols) > 1:
            sequences.append(symbols)
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for seq in sequences for pair in zip(seq, seq[1:]))
        if not counts:
            break
        # Most frequent pair; ties broken by the pair's text so the result is deterministic.
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        if pair[0] + pair[1] not in seen:
            seen.add(pair[0] + pair[1])
            vocab_list.append(pair[0] + pair[1])
        sequences = [_merge_pair(seq, pair) if len(seq) > 1 else seq for seq in sequences]
        sequences = [seq for seq in sequences if len(seq) > 1]
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def save_clip_tokenizer(words: list[str], folder: str | Path, model_max_length: int = 77) -> Path:
    """Write a tokenizer folder that ``CLIPTokenizer.from_pretrained(folder)`` loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    # The first line is a version header: CLIPTokenizer skips it when reading merges.
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2)
    )
    return folder
