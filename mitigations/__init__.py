"""Mitigations around a text-to-image model, beside the alignment itself: small, config-driven parts that a
generation service or an eval harness composes.

* ``filter``: the prompt filter (a normalising blocklist, optionally OR-ed with a local text classifier);
* ``normalise``: canonical text and obfuscation-tolerant term matching (shared by the filter and the rewriter);
* ``obfuscate``: seeded obfuscations of prompts (leetspeak, look-alikes, invisible characters, spacing, ...),
  for measuring filters and for red-teaming;
* ``filter_eval``: recall and false-positive rate of a filter on given prompts and their obfuscations;
* ``rewrite``: the prompt rewriter (diversity for unspecified groups, safety reframing in trigger contexts);
* ``moderation``: image moderation with the configured scorers (``inference.scorers``);
* ``stack``: the layered guarded generator (filter -> rewrite -> model -> output check -> regenerate -> blur),
  with a per-prompt record of every layer's decision, for the eval harness and the generation service;
* ``config``: loading a mitigation's section (``prompt_filter:``, ``rewrite:``, ``moderate:``) from YAML.

Above ``inference``, below ``preference_sets`` and the stages; no world-specific code: what a world or a real
model needs is in its config file (``configs/filters/``, ``configs/rewrite/``, ``configs/moderation/``).
"""
