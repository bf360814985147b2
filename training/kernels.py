"""``KernelOptions``: how the trainer's kernels are chosen, never what they compute.

These are the benchmarks' and the tests' knobs, kept out of the user-facing ``TrainConfig`` (a YAML ``train:``
section that still sets one fails, naming where it went: ``TrainConfig.REMOVED_KEYS``). They reach the trainer as
``Trainer(cfg, kernels=KernelOptions(...))`` or ``train(cfg, kernels=...)``:

* ``allow_tf32``: TF32 matrix products and convolutions on CUDA (on by default, as every recipe trains);
  benchmarks/cuda_graph_check.py turns it off to compare two runs in full float32;
* ``compile_backend``: the ``torch.compile`` backend of ``train.compile_unet``; the CPU tests use ``aot_eager``
  (dynamo's capture and AOT autograd without inductor's code generation: seconds instead of minutes);
* ``compile_options``: inductor options of ``compile_unet`` (keys of ``torch._inductor.list_options()``), which
  choose kernels and scheduling, never the maths; the bench's points set them (configs/bench.yaml).

None of them is part of the checkpoint digest (training/checkpoints.py: ``config_digest``), as with
``compile_unet``: they change rounding at most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from inference.speedups import check_inductor_options


@dataclass(frozen=True)
class KernelOptions:
    allow_tf32: bool = True
    compile_backend: str = "inductor"
    compile_options: dict[str, Any] = field(default_factory=dict)

    def validate(self, cfg) -> None:
        """Raise ConfigError for options that cannot apply to ``cfg`` (a ``TrainConfig``): an unknown backend when
        ``compile_unet`` may compile, inductor options without a compile mode or with another backend, or keys that
        inductor does not know. Runs before any weights load."""
        compiles = cfg.unet_compile_mode("cuda") != "none"  # "auto" compiles on CUDA
        if compiles:
            import torch._dynamo  # optional: loaded only when the run compiles (torch._dynamo adds ~1.4 s to an import)

            try:
                torch._dynamo.lookup_backend(self.compile_backend)
            except Exception as exc:  # dynamo's InvalidBackend, or a backend that fails to import
                raise ConfigError(f"compile_backend {self.compile_backend!r}: {exc}") from exc
        if not self.compile_options:
            return
        if not compiles or self.compile_backend != "inductor":
            raise ConfigError("compile_options are inductor options: they need compile_unet regions, full or auto "
                              f"and compile_backend inductor (got {cfg.compile_unet!r}, {self.compile_backend!r})")
        try:
            check_inductor_options(self.compile_options, "compile_options")
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
