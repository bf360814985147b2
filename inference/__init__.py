"""Shared inference, used by curation, evaluation and the benchmarks (and the synthetic world's tools).

* ``generation``: the generation engine (:class:`GenerationSpec`, :class:`ImageStore`, seeded batches split
  across processes, model fingerprints, samplers, batch sizes);
* ``scorers``: image scorers behind one interface (``build_scorer``: oracle, NudeNet, CLIP concepts);
* ``speedups``: exact-math inference fast paths for a diffusers pipeline;
* ``prompts``: prompt sources (the synthetic world, a file, templates) and the prompt normal form that dedupe
  and the leakage checks compare.

Above ``core``, below the stages: nothing in here imports a stage.
"""
