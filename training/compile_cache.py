"""Compile once, reuse across runs: the trainer's persistent ``torch.compile`` caches and the ``compile_unet: auto``
rule that decides whether compiling the UNet pays for itself.

**The cache folder** (``train.compile_cache_dir``, default ``$XDG_CACHE_HOME/safe-diffusion-dpo/torch_compile``):

    <compile_cache_dir>/inductor/            inductor's FX-graph, AOT-autograd and autotune caches (content-keyed by
                                             torch itself), unless the environment sets TORCHINDUCTOR_CACHE_DIR
    <compile_cache_dir>/triton/              Triton's compiled kernels, unless the environment sets TRITON_CACHE_DIR
    <compile_cache_dir>/<key>/artifacts-<mode>.bin   torch's portable "mega-cache" of one run's compiled graphs
                                             (``torch.compiler.save_cache_artifacts``), loaded before compiling
    <compile_cache_dir>/<key>/record.json    what compiling and stepping measured on this machine, per mode: the
                                             compile seconds (first run and later ones) and steady seconds per pair

``<key>`` (:class:`GraphSpec`) hashes everything the compiled graphs depend on and nothing else: the torch version,
the GPU's name, the UNet's architecture (its config.json, not its weights: a graph does not depend on weight
values), the per-process micro-batches and latent shape, the mixed precision, the LoRA settings, the fused-LoRA
setting, gradient checkpointing, channels_last, the compile backend and its options, and whether the step runs the
reference forward (``reference_cache``) or the retain anchor. The compile mode is not in the key: the record holds
one entry per mode, so an eager run's measured step rate informs a later ``auto`` decision.

**The auto rule** (:func:`decide_compile`): compile when the job is long enough to repay it,

    pair visits x (eager s/pair - compiled s/pair) > expected compile seconds,

the compile seconds being those of a warm cache (a record saying this key compiled before) or of a cold one. Rates
and compile seconds come from this machine's record when it has them, else from :data:`PRIORS` (measured on an
H100 at the family's native resolution, scaled by latent pixels). The same rule decides, separately, whether the
reference pass (training/reference_cache.py) compiles its own adapter-off graph or runs eager: its pair visits are
the rows it computes. The trainer logs each decision with its numbers.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.io import atomic_write_bytes, atomic_write_json, sha256_file, stable_key

FORMAT = "dpo-compile-cache-v1"
RECORD_NAME = "record.json"


def default_compile_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/safe-diffusion-dpo/torch_compile`` (``~/.cache/...`` without XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "safe-diffusion-dpo" / "torch_compile"


@dataclass(frozen=True)
class GraphSpec:
    """What the trainer's compiled UNet graphs depend on (module docstring); :meth:`key` names the cache entry."""

    torch_version: str
    device_name: str  # the GPU's name ("NVIDIA H100 80GB HBM3"), or "cpu"
    unet_architecture: str  # sha256 of the UNet's config.json
    pair_micro_batch: int  # pairs per process per micro-step
    retain_micro_batch: int  # retain images per process per micro-step (0: no retain anchor)
    latent_shape: tuple[int, int, int]  # (C, h, w)
    mixed_precision: str  # "bf16", "fp16" or "no"
    lora: tuple  # (rank, alpha, target modules, dropout, use_dora)
    fused_lora: str  # the fused_lora setting ("auto", "on", "off")
    gradient_checkpointing: bool
    channels_last: bool
    reference_in_step: bool  # False with reference_cache: the step runs the policy forward only
    backend: str
    options: tuple = ()  # sorted (name, value) inductor options

    def key(self) -> str:
        return stable_key(FORMAT, asdict(self))


def unet_architecture_hash(model_path: str | Path) -> str:
    """sha256 of ``unet/config.json``: the architecture, which the graphs depend on, not the weights."""
    config = Path(model_path) / "unet" / "config.json"
    return sha256_file(config) if config.is_file() else "unknown"


@dataclass(frozen=True)
class RatePrior:
    """Steady seconds per pair and compile seconds of one family at its native resolution on one H100.

    Measured: compiled step rates (SD1.5 batch 48: 82.95 pairs/s with the reference cache, 61.6 inline; SDXL batch 4:
    10.23 and 7.69), compiled reference pass (239.4 and 27.6 pairs/s), SD1.5's cold compile (step graph 122 s,
    reference graph 44 s). Estimated: the eager rates (the H200's measured eager/compiled ratio, 1.50-1.56, applied to
    the compiled ones), SDXL's compile seconds, and every warm compile (dynamo still traces; inductor's and
    AOT-autograd's caches skip the rest)."""

    latent_pixels: int  # h x w of the native resolution
    step_eager_s: float  # s/pair, reference forward in the step
    step_compiled_s: float
    step_eager_cached_reference_s: float  # s/pair, policy only (reference_cache on)
    step_compiled_cached_reference_s: float
    reference_eager_s: float  # s/pair of the reference pass
    reference_compiled_s: float
    step_compile_cold_s: float
    step_compile_warm_s: float
    reference_compile_cold_s: float
    reference_compile_warm_s: float


PRIORS = {
    "sd": RatePrior(64 * 64, 1 / 37.0, 1 / 61.6, 1 / 49.0, 1 / 82.95, 1 / 160.0, 1 / 239.4, 122.0, 25.0, 44.0, 10.0),
    "sdxl": RatePrior(128 * 128, 1 / 5.2, 1 / 7.69, 1 / 6.9, 1 / 10.23, 1 / 18.0, 1 / 27.6, 300.0, 60.0, 110.0, 25.0),
}


@dataclass(frozen=True)
class CompileDecision:
    """One application of the auto rule, with the numbers it used (logged, and kept in training_summary.json)."""

    what: str  # "step" or "reference pass"
    compile: bool
    pair_visits: int
    eager_s_per_pair: float
    compiled_s_per_pair: float
    compile_s: float
    warm: bool  # the cache held an entry for this key: compile_s is a warm compile's
    source: str  # where the rates came from: "measured on this machine" or "estimate"

    @property
    def saving_s(self) -> float:
        """Seconds compiling saves over the job (negative: it costs more than it saves)."""
        return self.pair_visits * (self.eager_s_per_pair - self.compiled_s_per_pair) - self.compile_s

    def describe(self) -> str:
        verdict = "compile" if self.compile else "eager"
        return (f"{self.what}: {verdict}: {self.pair_visits} pair visits x ({self.eager_s_per_pair * 1e3:.1f} - "
                f"{self.compiled_s_per_pair * 1e3:.1f}) ms/pair = {self.pair_visits * (self.eager_s_per_pair - self.compiled_s_per_pair):.0f} s "
                f"saved against ~{self.compile_s:.0f} s of {'warm' if self.warm else 'cold'} compiling "
                f"({self.source})")

    def as_dict(self) -> dict:
        return {**asdict(self), "saving_s": round(self.saving_s, 1)}


def decide_compile(what: str, pair_visits: int, eager_s_per_pair: float, compiled_s_per_pair: float,
                   compile_s: float, warm: bool, source: str) -> CompileDecision:
    """The auto rule: compile when ``pair_visits`` x (eager - compiled) s/pair exceeds ``compile_s``."""
    saving = pair_visits * (eager_s_per_pair - compiled_s_per_pair) - compile_s
    return CompileDecision(what, saving > 0, pair_visits, eager_s_per_pair, compiled_s_per_pair, compile_s, warm,
                           source)


@dataclass
class CompileRecord:
    """``record.json``: per mode ("full", "regions", "none", and "reference:<mode>" for the reference pass) the
    measured steady s/pair and compile seconds of the first and of later compiles on this machine."""

    modes: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "CompileRecord":
        try:
            return cls(dict(json.loads(path.read_text()).get("modes", {})))
        except (OSError, ValueError, AttributeError):
            return cls()

    def get(self, mode: str, name: str) -> float | None:
        value = self.modes.get(mode, {}).get(name)
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    def put(self, mode: str, **values: float | None) -> None:
        entry = self.modes.setdefault(mode, {})
        entry.update({k: round(float(v), 6) for k, v in values.items() if v is not None and v > 0})


class CompileCache:
    """The cache entry of one run (module docstring): where the caches live, what was measured before, and the
    measurements of this run once it has them."""

    def __init__(self, root: str | Path, spec: GraphSpec) -> None:
        self.root = Path(root)
        self.spec = spec
        self.key = spec.key()
        self.folder = self.root / self.key
        self.record = CompileRecord.read(self.folder / RECORD_NAME)
        self.environment: dict[str, str] = {}  # the cache variables and where they point

    def activate(self) -> dict[str, str]:
        """Point inductor's and Triton's caches into the folder (unless the environment already chose: an explicit
        TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR wins), before anything compiles, and load the mega-cache
        artifacts of earlier runs of this key. Returns the variables and their values."""
        for variable, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
            if not os.environ.get(variable):
                os.environ[variable] = str(self.root / sub)
            self.environment[variable] = os.environ[variable]
        # torch.compiler.load_cache_artifacts exists from torch 2.7 on (the GPU machines run 2.11); older torch
        # keeps the on-disk caches above, which serve the same purpose on one machine.
        loader = getattr(torch.compiler, "load_cache_artifacts", None)
        for artifacts in sorted(self.folder.glob("artifacts-*.bin")) if loader is not None else []:
            try:
                loader(artifacts.read_bytes())
            except Exception as exc:  # a stale or foreign file is derived data: compile afresh
                warnings.warn(f"compile cache {artifacts} not loaded ({exc}); compiling afresh", stacklevel=2)
        return dict(self.environment)

    def is_warm(self, mode: str) -> bool:
        """Whether a run of this key compiled ``mode`` to the end before (its caches then hold the graphs)."""
        return self.record.get(mode, "compile_s_cold") is not None or (self.folder / f"artifacts-{mode}.bin").is_file()

    def save_artifacts(self, mode: str) -> bool:
        """Write torch's mega-cache of what this process compiled (torch >= 2.7); False when there is none."""
        saver = getattr(torch.compiler, "save_cache_artifacts", None)
        if saver is None:
            return False
        saved = saver()
        if not saved or not saved[0]:
            return False
        atomic_write_bytes(self.folder / f"artifacts-{mode}.bin", saved[0])
        return True

    def write_record(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / RECORD_NAME, {"format": FORMAT, "spec": asdict(self.spec),
                                                      "modes": self.record.modes})

    def note_compile(self, mode: str, compile_s: float, s_per_pair: float | None, warm: bool) -> None:
        """Record one compile's seconds (as a cold or a warm one) and the steady rate that followed."""
        self.record.put(mode, **{"compile_s_warm" if warm else "compile_s_cold": compile_s, "s_per_pair": s_per_pair})

    def note_rate(self, mode: str, s_per_pair: float | None) -> None:
        self.record.put(mode, s_per_pair=s_per_pair)


def _scaled_prior(family: str, latent_pixels: int) -> RatePrior:
    """The family's prior with its rates scaled to ``latent_pixels`` (cost ~ pixels; compile seconds unscaled)."""
    prior = PRIORS.get(family, PRIORS["sd"])
    scale = latent_pixels / prior.latent_pixels
    rates = {name: getattr(prior, name) * scale for name in (
        "step_eager_s", "step_compiled_s", "step_eager_cached_reference_s", "step_compiled_cached_reference_s",
        "reference_eager_s", "reference_compiled_s")}
    return RatePrior(**{**asdict(prior), **rates, "latent_pixels": latent_pixels})


@dataclass(frozen=True)
class JobShape:
    """What the auto rule needs to know about a job."""

    family: str  # "sd" or "sdxl"
    latent_pixels: int  # h x w
    pair_visits: int  # pairs the steps will train on (steps x pairs per step)
    reference_in_step: bool


def decide_step_compile(cache: CompileCache, job: JobShape, mode: str) -> CompileDecision:
    """The auto rule for the training step compiled in ``mode`` ("full" or "regions") against eager."""
    prior = _scaled_prior(job.family, job.latent_pixels)
    eager = prior.step_eager_s if job.reference_in_step else prior.step_eager_cached_reference_s
    compiled = prior.step_compiled_s if job.reference_in_step else prior.step_compiled_cached_reference_s
    warm = cache.is_warm(mode)
    compile_s = prior.step_compile_warm_s if warm else prior.step_compile_cold_s
    measured_eager, measured_compiled = cache.record.get("none", "s_per_pair"), cache.record.get(mode, "s_per_pair")
    measured_compile = cache.record.get(mode, "compile_s_warm" if warm else "compile_s_cold")
    measured = [m is not None for m in (measured_eager, measured_compiled, measured_compile)]
    if measured_compiled is not None and measured_eager is None:
        measured_eager = measured_compiled * eager / compiled  # the prior's ratio on this machine's rate
    if measured_eager is not None and measured_compiled is None:
        measured_compiled = measured_eager * compiled / eager
    source = ("measured on this machine" if all(measured) else
              "partly measured on this machine" if any(measured) else "estimate")
    return decide_compile("step", job.pair_visits, measured_eager or eager, measured_compiled or compiled,
                          measured_compile or compile_s, warm, source)


def decide_reference_compile(cache: CompileCache, job: JobShape, mode: str, rows_to_compute: int,
                             pairs_per_step: int) -> CompileDecision:
    """The auto rule for the reference pass: compile its adapter-off graph, or run it eager."""
    prior = _scaled_prior(job.family, job.latent_pixels)
    reference_mode = f"reference:{mode}"
    warm = cache.is_warm(reference_mode)
    eager = cache.record.get("reference:none", "s_per_pair")
    compiled = cache.record.get(reference_mode, "s_per_pair")
    compile_s = cache.record.get(reference_mode, "compile_s_warm" if warm else "compile_s_cold")
    measured = [v is not None for v in (eager, compiled, compile_s)]
    source = ("measured on this machine" if all(measured) else
              "partly measured on this machine" if any(measured) else "estimate")
    return decide_compile(
        "reference pass", rows_to_compute * pairs_per_step, eager or prior.reference_eager_s,
        compiled or prior.reference_compiled_s,
        compile_s or (prior.reference_compile_warm_s if warm else prior.reference_compile_cold_s), warm, source)
