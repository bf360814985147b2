"""The prompt rewriter: diversity for people whose group the prompt leaves open, and safety reframing in the
contexts where a model adds unrequested exposure. Rule-based from a rule table (the ``rewrite:`` section), with
an optional local text-to-text model in front.

**Diversity** (``rewrite.diversity``). A prompt that names a role ("a photo of a CEO") and no group gets a group
from ``groups``, chosen by a schedule kept per role, so that over the prompts of each role the groups come out
uniformly: ``round_robin`` cycles through them in order, ``balanced_random`` draws a seeded random permutation
of all groups for every block of ``len(groups)`` prompts. The group is appended (``placement: append``,
``append_format``: "a CEO" -> "a CEO, East Asian woman") or put before the role word (``placement:
before_role``: "a doctor" -> "a zorvan doctor", the article fixed for a following vowel). A prompt that already
names a group (``group_terms``, default: the groups themselves) is left as it is.

**Reframing** (``rewrite.reframe``: a list of rules). A rule names trigger ``contexts`` (beach, party, "dressed for
a date") and a ``phrase`` ("fully clothed") appended in them. A prompt that already says it (``safe_terms``) is
left alone. A prompt that asks for the content (``request_terms``) is handled by the rule's explicit
``request_policy``: ``honour`` leaves the request as written (it is never turned into its opposite); ``suppress``
cuts the request out and appends the phrase.

All terms are matched like the prompt filter's (:mod:`mitigations.normalise`: case, spacing, punctuation,
leetspeak, look-alikes and invisible characters do not hide them). **Model** (``rewrite.model``): a local
transformers seq2seq or causal LM rewrites the prompt first (``instruction`` formats its input); the rules run
on its output, so their guarantees hold whatever the model writes. Every result lists what was changed and
why.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Protocol, Sequence

import torch

from core.cli import resolve_device
from core.errors import ConfigError, DataError
from mitigations.config import load_mitigation_config
from mitigations.local_models import check_transformers_model_dir
from mitigations.normalise import TermMatcher, longest_first, term_units

SCHEDULES = ("round_robin", "balanced_random")


def _check_terms(where: str, terms: Sequence[str]) -> None:
    for term in terms:
        if not term_units(term):
            raise ConfigError(f"{where}: term {term!r} has no letters")


@dataclass
class DiversityConfig:
    """Groups for prompts that name a role and no group (off while ``groups`` is empty)."""

    groups: list[str] = field(default_factory=list, metadata={
        "help": "Group phrases to insert, e.g. [zorvan, quelli, mirdan] or [East Asian woman, Black man, ...]; "
                "empty: no diversity rewriting."})
    roles: dict[str, list[str]] = field(default_factory=dict, metadata={
        "help": "Role -> the terms that name it (doctor: [doctor, physician]); each role keeps its own schedule."})
    group_terms: list[str] = field(default_factory=list, metadata={
        "help": "Terms that mean the prompt already names a group (then it is left unchanged); empty: the groups."})
    placement: Literal["append", "before_role"] = field(default="append", metadata={
        "help": "append: append_format after the prompt; before_role: the group right before the role word."})
    append_format: str = field(default="{prompt}, {group}", metadata={
        "help": "How the group is appended (placement append), over {prompt} and {group}."})
    schedule: Literal["round_robin", "balanced_random"] = field(default="round_robin", metadata={
        "help": "round_robin: the groups in order, per role; balanced_random: a seeded random order of all the "
                "groups for each block of len(groups) prompts of a role. Both are uniform over the groups."})
    seed: int = field(default=0, metadata={"help": "Seed of the balanced_random schedule."})

    @property
    def enabled(self) -> bool:
        return bool(self.groups)

    def validate(self) -> None:
        if not self.enabled:
            return
        if len(set(self.groups)) != len(self.groups):
            raise ConfigError(f"rewrite.diversity.groups has repeats: {self.groups}")
        if not self.roles or not all(self.roles.values()):
            raise ConfigError("rewrite.diversity.roles must map each role to at least one term that names it")
        _check_terms("rewrite.diversity.groups", self.groups)
        _check_terms("rewrite.diversity.group_terms", self.group_terms)
        for role, terms in self.roles.items():
            _check_terms(f"rewrite.diversity.roles.{role}", terms)
        if self.placement == "append":
            _check_format("rewrite.diversity.append_format", self.append_format, ("prompt", "group"))


@dataclass
class ReframeRule:
    """Append ``phrase`` in the trigger ``contexts``, with an explicit policy for prompts that ask for the content."""

    name: str = field(metadata={"help": "Name of the rule (in every change it makes), e.g. exposure."})
    contexts: list[str] = field(metadata={
        "help": "Trigger contexts, e.g. [beach, party, dressed for a date]."})
    phrase: str = field(metadata={"help": "The reframing phrase appended, e.g. fully clothed."})
    request_policy: Literal["honour", "suppress"] = field(metadata={
        "help": "A prompt that asks for the content (request_terms): honour leaves it as written; suppress cuts the "
                "request out and appends the phrase."})
    request_terms: list[str] = field(default_factory=list, metadata={
        "help": "Terms that ask for the content, e.g. [shirtless, bare torso]."})
    safe_terms: list[str] = field(default_factory=list, metadata={
        "help": "Terms that already say what the phrase says (fully clothed, fully dressed): no reframing."})
    format: str = field(default="{prompt}, {phrase}", metadata={
        "help": "How the phrase is appended, over {prompt} and {phrase}."})

    def validate(self) -> None:
        if not self.contexts:
            raise ConfigError(f"rewrite.reframe rule {self.name!r}: contexts is empty")
        if not self.phrase.strip():
            raise ConfigError(f"rewrite.reframe rule {self.name!r}: phrase is empty")
        for key in ("contexts", "request_terms", "safe_terms"):
            _check_terms(f"rewrite.reframe rule {self.name!r}.{key}", getattr(self, key))
        if self.request_policy == "suppress" and not self.request_terms:
            raise ConfigError(f"rewrite.reframe rule {self.name!r}: request_policy suppress needs request_terms")
        _check_format(f"rewrite.reframe rule {self.name!r}.format", self.format, ("prompt", "phrase"))


@dataclass
class RewriteModelConfig:
    """An optional local transformers model that rewrites the prompt before the rules (off without a path)."""

    path: Optional[str] = field(default=None, metadata={
        "help": "Local transformers folder of a seq2seq (T5, BART) or causal LM, with its tokenizer and .safetensors "
                "weights, or a hub id already in the local Hugging Face cache; null: no model."})
    instruction: str = field(default="{prompt}", metadata={
        "help": "The model's input, over {prompt}, e.g. 'Rewrite as a safe, diverse image prompt: {prompt}'."})
    max_new_tokens: int = field(default=77, metadata={"help": "Most tokens the model writes."})
    device: str = field(default="cpu", metadata={"help": "Device of the model: cpu, cuda, auto."})

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def validate(self) -> None:
        _check_format("rewrite.model.instruction", self.instruction, ("prompt",))
        if self.max_new_tokens < 1:
            raise ConfigError(f"rewrite.model.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class RewriteConfig:
    """The ``rewrite:`` section."""

    diversity: DiversityConfig = field(default_factory=DiversityConfig, metadata={
        "help": "Groups for prompts that name a role and no group."})
    reframe: list[ReframeRule] = field(default_factory=list, metadata={
        "help": "Reframing rules: a phrase appended in trigger contexts, with a request policy each."})
    model: RewriteModelConfig = field(default_factory=RewriteModelConfig, metadata={
        "help": "Optional local text-to-text model run before the rules."})
    leetspeak: bool = field(default=True, metadata={
        "help": "Digits and symbols count as the letters they stand for when terms are matched."})

    def validate(self) -> None:
        if not (self.diversity.enabled or self.reframe or self.model.enabled):
            raise ConfigError("rewrite: nothing to do; give diversity.groups, reframe rules or a model path")
        names = [rule.name for rule in self.reframe]
        if len(set(names)) != len(names):
            raise ConfigError(f"rewrite.reframe: rule names repeat: {names}")


def _check_format(where: str, template: str, slots: Sequence[str]) -> None:
    """ConfigError unless ``template`` uses only ``{slot}`` fields of ``slots`` and every one of them."""
    try:
        template.format(**{slot: "x" for slot in slots})
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{where} {template!r} may use only {', '.join('{%s}' % s for s in slots)} ({exc})") from exc
    missing = [slot for slot in slots if f"{{{slot}}}" not in template]
    if missing:
        raise ConfigError(f"{where} {template!r} must contain " + " and ".join("{%s}" % s for s in missing))


# --- results -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RewriteChange:
    """One thing the rewriter did: ``rule`` (diversity, a reframe rule's name, model), ``action`` and details."""

    rule: str
    action: str  # insert_group | append_phrase | remove_request | honour_request | model_rewrite | model_empty
    detail: str


@dataclass(frozen=True)
class RewriteResult:
    original: str
    prompt: str
    changes: tuple[RewriteChange, ...]

    @property
    def changed(self) -> bool:
        return self.prompt != self.original

    def to_log(self) -> dict[str, Any]:
        return {"original": self.original, "prompt": self.prompt,
                "changes": [vars(change) for change in self.changes]}


# --- the schedule ------------------------------------------------------------------------------------------------

class GroupSchedule:
    """The next group for each role: uniform over the groups within every block of ``len(groups)`` prompts of a
    role. Deterministic: the same sequence of roles always gets the same groups."""

    def __init__(self, groups: Sequence[str], kind: str = "round_robin", seed: int = 0):
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown schedule {kind!r}; valid: {list(SCHEDULES)}")
        if not groups:
            raise ConfigError("a group schedule needs at least one group")
        self.groups, self.kind, self.seed = list(groups), kind, seed
        self.counts: dict[str, int] = {}

    def reset(self) -> None:
        self.counts.clear()

    def next(self, role: str) -> str:
        count = self.counts.get(role, 0)
        self.counts[role] = count + 1
        block, position = divmod(count, len(self.groups))
        if self.kind == "round_robin":
            return self.groups[position]
        order = random.Random(f"{self.seed}|{role}|{block}").sample(self.groups, len(self.groups))
        return order[position]


# --- the model ---------------------------------------------------------------------------------------------------

class TextRewriter(Protocol):
    def rewrite(self, prompts: Sequence[str]) -> list[str]:
        ...


class LocalTextToText:
    """A local transformers model that writes a new prompt: a seq2seq model (``config.is_encoder_decoder``) or a
    causal LM (its continuation after the instruction is the output). Greedy decoding: deterministic."""

    def __init__(self, config: RewriteModelConfig):
        # optional: a local rewrite model, loaded only when one is configured
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        folder = check_transformers_model_dir(config.path, "rewrite.model.path")
        self.config, self.torch = config, torch
        self.device = resolve_device(config.device, "rewrite.model.device")
        self.seq2seq = bool(getattr(AutoConfig.from_pretrained(folder), "is_encoder_decoder", False))
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        loader = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = loader.from_pretrained(folder, use_safetensors=True).to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.seq2seq:
            self.tokenizer.padding_side = "left"  # a causal LM continues from the last position

    def rewrite(self, prompts: Sequence[str]) -> list[str]:
        texts = [self.config.instruction.format(prompt=p) for p in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        with self.torch.no_grad():
            output = self.model.generate(**batch, max_new_tokens=self.config.max_new_tokens, do_sample=False)
        if not self.seq2seq:
            output = output[:, batch["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)]


# --- the rewriter ------------------------------------------------------------------------------------------------

_ARTICLE_BEFORE = re.compile(r"(?i)\b(an?)(\s+)$")
_DANGLING = re.compile(r"(?i)(?:\s*\b(?:who is|with an?|with|and|wearing)\b)+\s*(?=[,.;:!?]|$)")


def _article_for(word: str, original: str) -> str:
    article = "an" if word[:1].lower() in "aeiou" else "a"
    return article.capitalize() if original[:1].isupper() else article


def _tidy(text: str) -> str:
    """``text`` after a span was cut out: no dangling "and"/"with", no empty list items, single spaces."""
    text = _DANGLING.sub("", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"\s{2,}", " ", text)
    return text.strip(" ,;:")


class _Rule:
    """A reframe rule with its matchers."""

    def __init__(self, rule: ReframeRule, leetspeak: bool):
        self.rule = rule
        self.contexts = TermMatcher({rule.name: rule.contexts}, leetspeak)
        self.requests = TermMatcher({rule.name: rule.request_terms}, leetspeak)
        self.safe = TermMatcher({rule.name: rule.safe_terms}, leetspeak)


class PromptRewriter:
    """Rewrites prompts with the configured rules (and model). Keeps the diversity schedule's state: rewrite a
    run's prompts with one rewriter, in order, for the balance to hold; :meth:`reset` starts it again."""

    def __init__(self, config: RewriteConfig, model: TextRewriter | None = None):
        self.config = config
        diversity = config.diversity
        self.roles = TermMatcher(diversity.roles, config.leetspeak) if diversity.enabled else None
        self.group_names = TermMatcher({"group": diversity.group_terms or diversity.groups}, config.leetspeak) \
            if diversity.enabled else None
        self.schedule = GroupSchedule(diversity.groups, diversity.schedule, diversity.seed) if diversity.enabled else None
        self.rules = [_Rule(rule, config.leetspeak) for rule in config.reframe]
        if model is None and config.model.enabled:
            model = LocalTextToText(config.model)
        self.model = model

    @classmethod
    def from_file(cls, path: str | Path, overrides: Sequence[str] = ()) -> "PromptRewriter":
        return cls(load_mitigation_config(RewriteConfig, path, "rewrite", overrides))

    def reset(self) -> None:
        if self.schedule is not None:
            self.schedule.reset()

    def rewrite(self, prompt: str) -> RewriteResult:
        return self.rewrite_batch([prompt])[0]

    def rewrite_batch(self, prompts: Sequence[str]) -> list[RewriteResult]:
        """One result per prompt, in order (the model, if any, runs once over the batch)."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise DataError(f"prompt rewriter: prompt {i} is {type(prompt).__name__}, not a string")
        rewritten = list(prompts)
        model_changes: list[list[RewriteChange]] = [[] for _ in prompts]
        if self.model is not None and prompts:
            for i, text in enumerate(self.model.rewrite(list(prompts))):
                if text:
                    rewritten[i] = text
                    model_changes[i].append(RewriteChange("model", "model_rewrite", f"{prompts[i]!r} -> {text!r}"))
                else:
                    model_changes[i].append(RewriteChange("model", "model_empty", "the model wrote nothing; prompt kept"))
        return [self._rules(original, text, changes)
                for original, text, changes in zip(prompts, rewritten, model_changes)]

    def _rules(self, original: str, text: str, changes: list[RewriteChange]) -> RewriteResult:
        pending = []  # (rule, reason) of the phrases to append once diversity is done
        for rule in self.rules:
            requested = rule.requests.find(text)
            if requested and rule.rule.request_policy == "honour":
                changes.append(RewriteChange(rule.rule.name, "honour_request",
                                             f"request {requested[0].text!r} kept (request_policy honour)"))
                continue
            if requested:  # suppress
                for hit in reversed(longest_first(requested)):
                    text = text[:hit.start] + text[hit.end:]
                text = _tidy(text)
                changes.append(RewriteChange(rule.rule.name, "remove_request",
                                             "removed " + ", ".join(repr(h.text) for h in longest_first(requested))))
            if rule.safe.find(text):
                continue
            contexts = rule.contexts.find(text)
            if requested or contexts:
                reason = "suppressed request" if requested else f"context {contexts[0].text!r}"
                pending.append((rule.rule, reason))
        text = self._diversify(text, changes)
        for rule, reason in pending:
            text = rule.format.format(prompt=text.rstrip(), phrase=rule.phrase) if text.strip() else rule.phrase
            changes.append(RewriteChange(rule.name, "append_phrase", f"{rule.phrase!r} ({reason})"))
        return RewriteResult(original, text, tuple(changes))

    def _diversify(self, text: str, changes: list[RewriteChange]) -> str:
        if self.roles is None:
            return text
        roles = self.roles.find(text)
        if not roles or self.group_names.find(text):
            return text
        role = roles[0]
        group = self.schedule.next(role.key)
        diversity = self.config.diversity
        if diversity.placement == "append":
            text = diversity.append_format.format(prompt=text.rstrip(), group=group)
        else:
            before, after = text[:role.start], text[role.start:]
            article = _ARTICLE_BEFORE.search(before)
            if article:
                before = before[:article.start(1)] + _article_for(group, article.group(1)) + article.group(2)
            text = f"{before}{group} {after}"
        changes.append(RewriteChange("diversity", "insert_group", f"role {role.key} ({role.text!r}) -> {group!r}"))
        return text
