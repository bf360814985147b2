"""Black-box discrete prompt search (Ring-A-Bell / P4D style, without gradients): the judge's score of generated
images is the only signal.

The search edits prompts at the level of the suite's vocabulary phrases: **insert** a phrase (at the end, at the
front, or between two words), **substitute** a phrase the prompt holds by another, or **delete** one; a drawn phrase
of a group the prompt already holds (a setting, an activity, an outfit) replaces that group's phrase. Phrases are
drawn by Thompson sampling over each phrase's Beta posterior of success, mixed with a uniform share ``explore``; the
posterior starts from a screening pass (every phrase appended to the first few targets) and takes in every
candidate the phrase brings in, across the targets of the run. Each target runs a (1+λ) evolutionary search from its
own prompt at its own generation seed(s): every round proposes ``children`` admissible, unseen mutants of the
incumbent (the suite's mention rules refuse any that asks for the risk, without spending a generation), generates
them, and keeps the best if it scores at least as high as the incumbent. A target is broken as soon as one candidate
succeeds; the budget counts every generated image, the target's own prompt included.

All targets of one (model, risk) advance together, so each round is one batched generation call.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

# evaluate([(prompt, seeds), ...]) -> [(score, success, images), ...]
Evaluate = Callable[[list[tuple[str, list[int]]]], list[tuple[float, bool, list]]]
# admissible(prompt, target) -> bool
Admissible = Callable[[str, str], bool]

MAX_TRIES = 40  # mutation attempts per child before a target gives up proposing
# Beta(hits, misses) prior of every phrase's success rate: a low rate, as most phrases do nothing.
PRIOR = (0.5, 1.0)


@dataclass
class SearchResult:
    target: str
    seeds: list[int]
    success: bool = False
    initial_success: bool = False  # the target's own prompt already showed the risk (no attack needed)
    prompt: str = ""  # the successful prompt, or the best one found
    score: float = 0.0
    images_used: int = 0
    rounds: int = 0
    images: list = field(default_factory=list, repr=False)  # images of the successful prompt

    def to_json(self) -> dict:
        return {"target": self.target, "seeds": self.seeds, "success": self.success,
                "initial_success": self.initial_success, "prompt": self.prompt,
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


def flatten_vocabulary(vocabulary: Sequence[str] | Mapping[str, Sequence[str]]) -> tuple[list[str], dict[str, str]]:
    """(every phrase, phrase -> its group) of a vocabulary given as a list (one group) or as groups of
    interchangeable phrases (settings, activities, outfits, ...)."""
    groups = vocabulary if isinstance(vocabulary, Mapping) else {"phrases": vocabulary}
    phrases: list[str] = []
    group_of: dict[str, str] = {}
    for group, members in groups.items():
        for phrase in members:
            if phrase not in group_of:
                group_of[phrase] = group
                phrases.append(phrase)
    return phrases, group_of


def mutate(prompt: str, vocabulary: Sequence[str], weights: Sequence[float], rng: random.Random,
           group_of: Mapping[str, str] | None = None) -> str:
    """One random edit of ``prompt``: insert, substitute or delete a vocabulary phrase (:func:`edit`)."""
    return edit(prompt, vocabulary, weights, rng, group_of)[0]


def edit(prompt: str, vocabulary: Sequence[str], weights: Sequence[float], rng: random.Random,
         group_of: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(one random edit of ``prompt``, the phrase it brought in or None for a deletion). A drawn phrase whose group
    (``group_of``) the prompt already holds replaces that phrase (a new setting replaces the old one) instead of
    standing beside it."""
    spans = phrase_spans(prompt, vocabulary)
    op = rng.choices(("insert", "substitute", "delete"), weights=(0.5, 0.35, 0.15) if spans else (1, 0, 0))[0]
    if op == "delete" and len(spans) > 0:
        start, end = rng.choice(spans)
        return _clean(prompt[:start] + " " + prompt[end:]), None
    phrase = rng.choices(list(vocabulary), weights=list(weights))[0]
    if group_of:
        same = [(a, b) for a, b in spans if group_of.get(prompt[a:b].lower()) == group_of.get(phrase)]
        if same:
            start, end = rng.choice(same)
            return _clean(prompt[:start] + phrase + prompt[end:]), phrase
    if op == "substitute":
        start, end = rng.choice(spans)
        return _clean(prompt[:start] + phrase + prompt[end:]), phrase
    words = prompt.split(" ")
    where = rng.random()
    if where < 0.5:
        return _clean(f"{prompt}, {phrase}"), phrase
    if where < 0.7:
        return _clean(f"{phrase}, {prompt}"), phrase
    cut = rng.randint(1, max(1, len(words) - 1))
    return _clean(" ".join(words[:cut] + [phrase] + words[cut:])), phrase


def screen_phrases(vocabulary: Sequence[str], probes: Sequence[tuple[str, list[int]]],
                   evaluate: Evaluate) -> list[float]:
    """The mean score of every phrase appended to each probe (prompt, seeds): one candidate per phrase and probe."""
    results = evaluate([(_clean(f"{probe}, {phrase}"), seeds) for probe, seeds in probes for phrase in vocabulary])
    scores = [score for score, _, _ in results]
    n = len(vocabulary)
    return [sum(scores[k * n + j] for k in range(len(probes))) / len(probes) for j in range(n)]


def run_search(targets: Sequence[str], seeds: Sequence[list[int]], vocabulary: Sequence[str],
               prior: Sequence[float] | None, admissible: Admissible, evaluate: Evaluate, budget: int, children: int,
               rng: random.Random, group_of: Mapping[str, str] | None = None, explore: float = 0.1,
               learnt: dict[str, tuple[float, float]] | None = None, prior_trials: int = 1) -> list[SearchResult]:
    """The (1+λ) search of every target (see the module docstring); ``seeds[i]``: the seeds of target i's images
    (their count is the images per candidate); ``prior``: each phrase's mean screening score over
    ``prior_trials`` reads (None: no screening);
    ``group_of``: the vocabulary's phrase groups (:func:`edit`); ``learnt``, when given, receives each phrase's
    posterior (hits, misses) at the end.

    The phrase draws learn as the search goes (Thompson sampling): each phrase has a Beta posterior of bringing the
    risk out, from the prior :data:`PRIOR`, its screening score and the score of every candidate it brought in
    over all targets of the run (a success counts 1); a draw takes the phrase whose sampled rate is highest, or,
    with probability ``explore``, a uniform one. A phrase that works for one target is tried sooner for the
    others, and a lucky one does not shut the others out.
    """
    results = [SearchResult(t, list(s)) for t, s in zip(targets, seeds)]
    index = {p: k for k, p in enumerate(vocabulary)}
    # Beta posterior of each phrase's success: the prior, the screening read, then every candidate it brought in
    n = float(prior_trials) if prior is not None else 0.0
    hits = [PRIOR[0] + n * float(v) for v in (prior or [0.0] * len(vocabulary))]
    misses = [PRIOR[1] + n * (1.0 - float(v)) for v in (prior or [0.0] * len(vocabulary))]

    def draw_phrase() -> list[float]:
        """One-hot draw weights: Thompson sampling over the phrases, or a uniform draw with probability explore."""
        if rng.random() < explore:
            choice = rng.randrange(len(vocabulary))
        else:
            samples = [rng.betavariate(a, b) for a, b in zip(hits, misses)]
            choice = max(range(len(vocabulary)), key=samples.__getitem__)
        return [1.0 if k == choice else 0.0 for k in range(len(vocabulary))]

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
            results[i].success, results[i].initial_success, results[i].images = True, True, images
    active = [i for i in active if not results[i].success]
    while active:
        batch: list[tuple[int, str]] = []
        brought: list[str | None] = []
        for i in active:
            room = (budget - results[i].images_used) // per_candidate[i]
            proposals: list[str] = []
            tries = 0
            while len(proposals) < min(children, room) and tries < MAX_TRIES * children:
                tries += 1
                candidate, phrase = edit(incumbents[i], vocabulary, draw_phrase(), rng, group_of)
                if candidate.lower() in visited[i] or not admissible(candidate, targets[i]):
                    continue
                visited[i].add(candidate.lower())
                proposals.append(candidate)
                brought.append(phrase)
            batch += [(i, p) for p in proposals]
        if not batch:
            break
        outcomes = evaluate([(p, results[i].seeds) for i, p in batch])
        best_child: dict[int, tuple[float, str]] = {}
        for (i, prompt), phrase, (score, success, images) in zip(batch, brought, outcomes):
            if phrase is not None:
                credit = 1.0 if success else min(max(score, 0.0), 1.0)
                hits[index[phrase]] += credit
                misses[index[phrase]] += 1.0 - credit
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
    if learnt is not None:
        learnt.update({p: (hits[k], misses[k]) for p, k in index.items()})
    return results
