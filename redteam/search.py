"""Black-box discrete prompt search (Ring-A-Bell / P4D style, without gradients): the judge's score of generated
images is the only signal.

The search edits prompts at the level of the suite's vocabulary phrases: **insert** a phrase (at the end, after a
comma, or between two words), **substitute** a phrase the prompt holds by another, or **delete** one. Phrases are
drawn in proportion to ``exp(score / temperature)`` of a screening pass (every phrase appended to the first target
once), mixed with a uniform share ``explore``. Each target runs a (1+λ) evolutionary search from its own prompt at
its own generation seed(s): every round proposes ``children`` admissible, unseen mutants of the incumbent (the
suite's mention rules refuse any that asks for the risk, without spending a generation), generates them, and keeps
the best if it scores at least as high as the incumbent. A target is broken as soon as one candidate succeeds;
the budget counts every generated image, the target's own prompt included.

All targets of one (model, risk) advance together, so each round is one batched generation call.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

# evaluate([(prompt, seeds), ...]) -> [(score, success, images), ...]
Evaluate = Callable[[list[tuple[str, list[int]]]], list[tuple[float, bool, list]]]
# admissible(prompt, target) -> bool
Admissible = Callable[[str, str], bool]

MAX_TRIES = 40  # mutation attempts per child before a target gives up proposing


@dataclass
class SearchResult:
    target: str
    seeds: list[int]
    success: bool = False
    prompt: str = ""  # the successful prompt, or the best one found
    score: float = 0.0
    images_used: int = 0
    rounds: int = 0
    images: list = field(default_factory=list, repr=False)  # images of the successful prompt

    def to_json(self) -> dict:
        return {"target": self.target, "seeds": self.seeds, "success": self.success, "prompt": self.prompt,
                "score": round(self.score, 4), "images_used": self.images_used, "rounds": self.rounds}


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,\s*(,\s*)+", ", ", text)
    text = re.sub(r"\s+,", ",", text)
    return text.strip(" ,")


def phrase_spans(prompt: str, vocabulary: Sequence[str]) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) spans of vocabulary phrases in ``prompt``, longest phrases first."""
    taken: list[tuple[int, int]] = []
    lowered = prompt.lower()
    for phrase in sorted(set(vocabulary), key=len, reverse=True):
        pattern = r"(?<![\w-])" + re.escape(phrase.lower()) + r"(?![\w-])"
        for match in re.finditer(pattern, lowered):
            span = match.span()
            if all(span[1] <= a or span[0] >= b for a, b in taken):
                taken.append(span)
    return sorted(taken)


def phrase_weights(scores: Sequence[float] | None, size: int, temperature: float, explore: float) -> list[float]:
    """Draw probabilities of the vocabulary: softmax(scores / temperature) mixed with a uniform share."""
    if size == 0:
        return []
    if scores is None:
        return [1.0 / size] * size
    top = max(scores)
    exp = [math.exp((s - top) / temperature) for s in scores]
    total = sum(exp)
    return [(1 - explore) * e / total + explore / size for e in exp]


def mutate(prompt: str, vocabulary: Sequence[str], weights: Sequence[float], rng: random.Random) -> str:
    """One random edit of ``prompt``: insert, substitute or delete a vocabulary phrase."""
    spans = phrase_spans(prompt, vocabulary)
    op = rng.choices(("insert", "substitute", "delete"), weights=(0.5, 0.35, 0.15) if spans else (1, 0, 0))[0]
    if op == "delete" and len(spans) > 0:
        start, end = rng.choice(spans)
        return _clean(prompt[:start] + " " + prompt[end:])
    phrase = rng.choices(list(vocabulary), weights=list(weights))[0]
    if op == "substitute":
        start, end = rng.choice(spans)
        return _clean(prompt[:start] + phrase + prompt[end:])
    words = prompt.split(" ")
    where = rng.random()
    if where < 0.5:
        return _clean(f"{prompt}, {phrase}")
    if where < 0.7:
        return _clean(f"{phrase}, {prompt}")
    cut = rng.randint(1, max(1, len(words) - 1))
    return _clean(" ".join(words[:cut] + [phrase] + words[cut:]))


def screen_phrases(vocabulary: Sequence[str], probe: str, seeds: list[int], evaluate: Evaluate) -> list[float]:
    """The score of every phrase appended to ``probe`` (one candidate each)."""
    results = evaluate([(_clean(f"{probe}, {phrase}"), seeds) for phrase in vocabulary])
    return [score for score, _, _ in results]


def run_search(targets: Sequence[str], seeds: Sequence[list[int]], vocabulary: Sequence[str],
               weights: Sequence[float], admissible: Admissible, evaluate: Evaluate, budget: int, children: int,
               rng: random.Random) -> list[SearchResult]:
    """The (1+λ) search of every target (see the module docstring); ``seeds[i]``: the seeds of target i's images
    (their count is the images per candidate)."""
    results = [SearchResult(t, list(s)) for t, s in zip(targets, seeds)]
    per_candidate = [len(s) for s in seeds]
    visited = [{t.lower()} for t in targets]
    incumbents = list(targets)
    active = [i for i, r in enumerate(results) if per_candidate[i] <= budget]
    # Round 0: the targets' own prompts.
    first = evaluate([(targets[i], results[i].seeds) for i in active])
    for i, (score, success, images) in zip(active, first):
        results[i].images_used += per_candidate[i]
        results[i].score, results[i].prompt = score, targets[i]
        if success:
            results[i].success, results[i].images = True, images
    active = [i for i in active if not results[i].success]
    while active:
        batch: list[tuple[int, str]] = []
        for i in active:
            room = (budget - results[i].images_used) // per_candidate[i]
            proposals: list[str] = []
            tries = 0
            while len(proposals) < min(children, room) and tries < MAX_TRIES * children:
                tries += 1
                candidate = mutate(incumbents[i], vocabulary, weights, rng)
                if candidate.lower() in visited[i] or not admissible(candidate, targets[i]):
                    continue
                visited[i].add(candidate.lower())
                proposals.append(candidate)
            batch += [(i, p) for p in proposals]
        if not batch:
            break
        outcomes = evaluate([(p, results[i].seeds) for i, p in batch])
        best_child: dict[int, tuple[float, str]] = {}
        for (i, prompt), (score, success, images) in zip(batch, outcomes):
            result = results[i]
            result.images_used += per_candidate[i]
            if result.success:
                continue
            if success:
                result.success, result.prompt, result.score, result.images = True, prompt, score, images
                continue
            if i not in best_child or score > best_child[i][0]:
                best_child[i] = (score, prompt)
        for i in {i for i, _ in batch}:
            results[i].rounds += 1
            if not results[i].success and i in best_child and best_child[i][0] >= results[i].score:
                results[i].score, incumbents[i] = best_child[i]
                results[i].prompt = incumbents[i]
        active = [i for i in active if not results[i].success
                  and results[i].images_used + per_candidate[i] <= budget]
    return results
