"""The synthetic world as a plug-in of the pipeline: what a config names, registered in :mod:`core.plugins`.

* prompt source ``world`` (:mod:`synthetic_world.prompt_source`): ``prompts: {source: world, family: exposure}``;
* scorer ``oracle`` (:mod:`synthetic_world.oracle_scorer`): exact attribute reads of generated images;
* eval suite ``synthetic`` (:mod:`synthetic_world.eval_suite`): ``eval.mode: synthetic``, the held-out prompts,
  metrics and bars;
* red-team suite ``synthetic`` (:mod:`synthetic_world.redteam_suite`): ``redteam.suite: synthetic``, the attacked
  risks, their start prompts, the mention rules and the oracle's judgement.

Found through the entry point ``world`` of the group ``safe_diffusion_dpo.plugins`` (pyproject.toml), or, in a
checkout used without an install, through ``SAFE_DIFFUSION_DPO_PLUGINS=synthetic_world.plugin`` or a config's
``plugins: [synthetic_world.plugin]``. Targets are ``module:attribute`` strings: registering imports none of the
world, a lookup imports only what it names.
"""

from __future__ import annotations

from core import plugins


def register() -> None:
    plugins.register("prompt_source", "world", "synthetic_world.prompt_source:PROMPT_SOURCE")
    plugins.register("scorer", "oracle", "synthetic_world.oracle_scorer:OracleScorer", reads="the synthetic world")
    plugins.register("eval_suite", "synthetic", "synthetic_world.eval_suite:EVAL_SUITE")
    plugins.register("redteam_suite", "synthetic", "synthetic_world.redteam_suite:REDTEAM_SUITE")
