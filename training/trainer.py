"""The LoRA Diffusion-DPO trainer as one object: ``Trainer(cfg, callbacks, kernels).train()``.

A run goes through the phases of :attr:`Trainer.PHASES`, each one method, timed (``training_summary.json``
``phase_seconds``; callbacks get ``on_phase_end``):

    setup           inputs checked before any weights load (output folder, model, set, per-risk options, init LoRA,
                    retain set, tracker, batch split, cuda_graph=on), the Accelerator, the frozen components
    caches          the latent/text caches of the pairs and the retain set (training/cache.py), or live encoding
    model           the UNet on the device, LoRA (training/lora.py, fused_lora.py), gradient checkpointing,
                    torch.compile (training/compile.py), AdamW and the LR schedule, accelerate's prepare, resume
    reference_pass  the reference losses of every step, once (``train.reference_cache``; training/reference_cache.py)
    steps           the optimiser steps (:meth:`Trainer.step`), eager or CUDA-graph captured (training/graph.py)
    save            the output folder, atomically (LoRA, card, resolved config, metrics, summary)

The maths of one step lives in training/step.py and training/loss.py; this module only holds the state and runs the
phases in order. Callbacks (training/callbacks.py) log, profile and steer the loop; ``KernelOptions``
(training/kernels.py) choose kernels. Neither changes what is trained.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs
from diffusers.optimization import get_scheduler

from core.config import write_resolved_config
from core.errors import ConfigError, PipelineError
from core.io import atomic_directory, atomic_write_json, atomic_write_text
from core.models import check_model_dir, model_fingerprint, resolve_model_path
from core.output_dir import check_output_dir, write_marker
from training.cache import (
    CachedPairSource, CachedRetainSource, CaptionTokens, UncachedPairSource, load_or_build_cache,
    load_or_build_retain_cache,
)
from training.callbacks import (
    MetricFile, ProgressBar, StepControl, StepForm, Tracker, TrainerCallback, check_tracker,
)
from training.card import render_model_card
from training.checkpoints import (
    config_digest, list_checkpoints, load_checkpoint, prune_checkpoints, resolve_resume, save_checkpoint,
)
from training.compile import compile_unet
from training.compile_cache import (
    CompileCache, CompileDecision, GraphSpec, JobShape, decide_reference_compile, decide_step_compile,
    default_compile_cache_dir, unet_architecture_hash,
)
from training.config import TrainConfig
from training.data import PreferencePairs, RetainImages, load_pairs, load_retain, model_resolution
from training.fused_lora import install_fused_lora
from training.graph import (
    CapturedStep, graph_blockers, optimizer_flags, resolve_cuda_graph, restore_optimizer_flags, source_blockers,
)
from training.kernels import KernelOptions
from training.lora import (PEFT_WEIGHT_NAME, add_lora, check_lora_settings, export_merged_unet, init_lora_from,
                           read_lora_file, read_text_encoder_lora, save_lora)
from training.text_lora import TextEncoderLora
from training.metrics import MetricAccumulator, all_finite
from training.models import NoiseSchedule, caption_token_ids, load_components
from training.reference_cache import (
    ReferencePass, extend_reference_errors, gather_step_errors, read_reference_errors, reference_cache_key,
    reference_cache_path, write_reference_errors,
)
from training.step import (
    DpoObjective, StepDraws, StepModel, dpo_loss_on_batch, draw_retain_step, draw_step, reference_pair_errors,
)


def _process_start_time() -> float:
    """Wall-clock time (``time.time()``) at which this process started: the timeline's zero, so its times include
    the interpreter's start and the imports, as a user's wait does."""
    try:
        import psutil  # optional: psutil is not a declared dependency

        return psutil.Process().create_time()
    except Exception:  # psutil missing or the process table unreadable: count from this module's import
        return _IMPORTED_AT


_IMPORTED_AT = time.time()


class TrainingDiverged(PipelineError):
    """The loss became NaN/inf; the run stops and keeps its last good checkpoint."""


def resolve_mixed_precision(setting: str) -> str:
    """Our setting -> accelerate's ("no", "fp16", "bf16")."""
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU (use bf16 or fp32 on CPU)")
    return "no" if setting == "fp32" else setting


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


@dataclass
class RunInputs:
    """What the config's files hold, read and checked before any weights load."""

    family: str  # "sd" or "sdxl"
    pairs: PreferencePairs
    per_pair: dict[str, torch.Tensor]  # (N,) values of the per-pair options set anywhere (rpo_alpha, ...)
    init_lora: tuple | None  # (tensors, metadata) of train.init_lora, applied after add_lora
    init_text_lora: tuple | None  # (tensors, adapter config) of its text encoder's LoRA, when the run trains one
    retain: RetainImages | None


def check_inputs(cfg: TrainConfig) -> RunInputs:
    """Everything that can fail on bad input, before any weights are loaded or a GPU is touched."""
    check_output_dir(cfg.output_dir, cfg.overwrite, "train.output_dir", keep=[
        ("train.work_dir", cfg.work_dir), ("train.data", cfg.data), ("train.retain.data", cfg.retain.data),
        ("train.reference_cache_dir", cfg.reference_cache_dir)])
    family = check_model_dir(cfg.model, cfg.variant)
    resolution = model_resolution(resolve_model_path(cfg.model))
    pairs = load_pairs(cfg.data, resolution, cfg.max_pairs)
    check_text_lora(cfg, family, pairs)
    per_pair = per_pair_options(cfg, pairs)
    # Read here, so a missing or unreadable LoRA fails before any weights load; used after add_lora.
    init_lora = read_lora_file(cfg.init_lora) if cfg.init_lora else None
    init_text_lora = read_init_text_lora(cfg)
    retain = load_retain(cfg.retain.data, resolution) if cfg.retain.weight > 0 else None
    return RunInputs(family, pairs, per_pair, init_lora, init_text_lora, retain)


def read_init_text_lora(cfg: TrainConfig) -> tuple | None:
    """The text encoder's LoRA of ``train.init_lora``. A run that trains one continues the saved one, which must
    exist and match; a run that trains none may not start from a LoRA that has one (it would drop half of it)."""
    if not cfg.init_lora:
        return None
    text = read_text_encoder_lora(cfg.init_lora)
    modules = cfg.lora.text_encoder_modules
    if text is None and modules:
        raise ConfigError(f"train.init_lora {cfg.init_lora} has no text encoder LoRA (text_encoder/"
                          f"{PEFT_WEIGHT_NAME}), and train.lora.text_encoder_modules asks to train one; start from a "
                          "LoRA trained with the same modules, or leave text_encoder_modules empty")
    if text is not None and not modules:
        raise ConfigError(f"train.init_lora {cfg.init_lora} holds a text encoder LoRA, which this run would drop: set "
                          f"train.lora.text_encoder_modules to {text[1].get('target_modules')} to "
                          "continue it")
    if text is not None:
        check_lora_settings(text[1], cfg.lora, cfg.init_lora, "text encoder's ")
        targets = text[1].get("target_modules") or []
        saved = {targets} if isinstance(targets, str) else set(targets)  # peft also takes one regex string
        if saved != set(modules):
            raise ConfigError(f"train.init_lora {cfg.init_lora}: its text encoder LoRA is on {sorted(saved)}, "
                              f"train.lora.text_encoder_modules asks for {sorted(modules)}; set them to match")
    return text


def check_text_lora(cfg: TrainConfig, family: str, pairs: PreferencePairs) -> None:
    """What ``train.lora.text_encoder_modules`` does not cover yet fails before any weights load."""
    if not cfg.lora.text_encoder_modules:
        return
    if family == "sdxl":
        raise ConfigError("train.lora.text_encoder_modules: a text-encoder LoRA is trained for SD1.x/2.x models only; "
                          "this model is SDXL (two encoders and pooled states); leave it empty")
    _check_risks_present("lora.text_encoder_risks", cfg.lora.text_encoder_risks, pairs, cfg.data)
    if cfg.export_merged_unet:
        raise ConfigError("train.export_merged_unet with train.lora.text_encoder_modules: a merged UNet alone would "
                          "drop the text encoder's LoRA; load the LoRA folder with load_lora_weights instead")
    if not cfg.cache_latents:
        raise ConfigError("train.lora.text_encoder_modules needs cache_latents: true (the reference's text states "
                          "come from the cache)")


def _check_risks_present(option: str, named: list[str], pairs, data: str) -> None:
    present = sorted(set(pairs.risks()))
    unknown = sorted(set(named) - set(present))
    if unknown:
        raise ConfigError(f"train.{option} names risk(s) {unknown} that {data} does not hold; its risks: {present}")


def per_pair_options(cfg: TrainConfig, pairs) -> dict[str, torch.Tensor]:
    """(N,) per-pair values of the options that may differ per risk, only those set anywhere:
    ``rpo_alpha`` (α) and ``rpo_rejected_share`` (s), each its global value overridden per risk."""
    options = {}
    for name, value, per_risk, used in [
        ("rpo_alpha", cfg.rpo_alpha, cfg.rpo_alpha_per_risk, cfg.uses_rpo()),
        ("rpo_rejected_share", cfg.rpo_rejected_share, cfg.rpo_rejected_share_per_risk, cfg.uses_rpo_rejected_share()),
    ]:
        if not used:
            continue
        _check_risks_present(f"{name}_per_risk", list(per_risk), pairs, cfg.data)
        options[name] = torch.tensor([per_risk.get(risk, value) for risk in pairs.risks()], dtype=torch.float32)
    return options


@dataclass(frozen=True)
class BatchLayout:
    """How one optimiser step's E pairs and R retain images split over the micro-steps and processes: micro-step a
    of process r takes slice a·P + r of each (training/step.py: StepDraws.micro_slice)."""

    pair_micro_batch: int  # pairs per process per micro-step
    retain_micro_batch: int  # retain images per process per micro-step
    accumulation: int  # micro-steps per optimiser step
    processes: int
    process_index: int

    @property
    def pairs_per_step(self) -> int:
        """E, over all processes and micro-steps."""
        return self.pair_micro_batch * self.accumulation * self.processes

    @property
    def retain_per_step(self) -> int:
        return self.retain_micro_batch * self.accumulation * self.processes

    def pair_slice(self, draws: StepDraws, micro_step: int) -> StepDraws:
        return draws.micro_slice(micro_step, self.process_index, self.processes, self.pair_micro_batch)

    def retain_slice(self, draws: StepDraws, micro_step: int) -> StepDraws:
        return draws.micro_slice(micro_step, self.process_index, self.processes, self.retain_micro_batch)


@dataclass
class IntervalClock:
    """Wall time of the log intervals (the loop's only host syncs are at their ends): pairs/s per interval, and the
    run's steady pairs/s without the first interval (start-up, cache warm-up, compilation, capture)."""

    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    timed: list[tuple[int, float]] = field(default_factory=list)  # (steps, seconds) of each closed interval

    def close(self) -> tuple[int, float]:
        """(steps, seconds) of the interval ending now."""
        elapsed = time.perf_counter() - self.start
        self.timed.append((self.steps, elapsed))
        return self.steps, elapsed

    def restart(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    def steady_pairs_per_s(self, pairs_per_step: int) -> float:
        steady = self.timed[1:] or self.timed
        return sum(s for s, _ in steady) * pairs_per_step / max(sum(t for _, t in steady), 1e-9)


class Trainer:
    """One training run of ``cfg``: its model, optimiser, data, accelerator and step state (module docstring).

    ``train()`` runs every phase and returns the summary (``training_summary.json``), or ``{"stopped_at": s}`` when
    a callback stopped the run (training/callbacks.py: StopAtStep). ``callbacks`` come after the default ones
    (metrics.jsonl, the report_to tracker, the progress bar); ``kernels``: training/kernels.py."""

    PHASES = ("setup", "caches", "model", "reference_pass", "steps", "save")

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[TrainerCallback] = (),
                 kernels: KernelOptions | None = None) -> None:
        self.cfg = cfg
        self.kernels = kernels or KernelOptions()
        self.kernels.validate(cfg)
        self.extra_callbacks = list(callbacks)
        self.work_dir = Path(cfg.work_dir)
        self.checkpoint_root = self.work_dir / "checkpoints"
        self.phase_seconds: dict[str, float] = {}
        self.start_step = 0
        self.resume_from: Path | None = None
        self.reference_errors: torch.Tensor | None = None  # (S, E, 2) on the device, with train.reference_cache
        self.reference_pass: ReferencePass | None = None
        self.accumulator = MetricAccumulator()
        self.last_values: dict[str, float] = {}
        self.process_start = _process_start_time()
        # Seconds since process start at which each phase ended ("<phase>_done", "first_step_done"), and the
        # durations the time-to-LoRA cost model reads (training_summary.json "timeline_s").
        self.timeline: dict[str, float] = {}
        self.compile_mode = "none"  # what the UNet is compiled in: "none", "regions" or "full"
        self.compile_cache: CompileCache | None = None
        self.compile_decisions: list[CompileDecision] = []

    # --- the run, top to bottom ------------------------------------------------------------------------------------

    def train(self) -> dict:
        # Seconds from process start to here: interpreter start, imports and config loading (timeline's first mark).
        self.timeline["train_called"] = self.since_start()
        with self.phase("setup"):
            self.setup()
        with self.phase("caches"):
            self.build_caches()
        with self.phase("model"):
            self.build_model()
        with self.phase("reference_pass"):
            self.compute_reference_errors()
        self.build_step()
        with self.phase("steps"):
            stopped = self.run_steps()
        if stopped is not None:
            return stopped
        summary = self.summary()
        with self.phase("save"):
            self.save(summary)
        self.accelerator.end_training()
        return summary

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times phase ``name`` (seconds of wall time, in ``phase_seconds``) and tells the callbacks."""
        start = time.perf_counter()
        yield
        self.phase_seconds[name] = time.perf_counter() - start
        self.timeline[f"{name}_done"] = self.since_start()
        self._fire("on_phase_end", name, self.phase_seconds[name])

    def pairs_per_s_wall(self, done: int, seconds: float) -> float:
        """What a user waits for: the pair visits this process trained up to step ``done`` over its wall time
        ``seconds`` (start-up, caching, compiling and the reference pass included; a resumed process counts the
        steps after its resume only)."""
        return (done - self.start_step) * self.layout.pairs_per_step / max(seconds, 1e-9)

    def since_start(self) -> float:
        """Seconds of wall time since this process started."""
        return time.time() - self.process_start

    def _fire(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # --- phases ----------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Checks that need no weights (so bad input fails in seconds), the Accelerator and the frozen components."""
        cfg = self.cfg
        self.inputs = check_inputs(cfg)
        check_tracker(cfg.report_to)
        self.mixed_precision = resolve_mixed_precision(cfg.mixed_precision)
        self.graph_setting = cfg.cuda_graph_setting()
        # A cast cached by autocast while capturing would be a graph-pool tensor reused outside the graph; without
        # the cache the same casts run every forward, with the same values (training/graph.py).
        handlers = [AutocastKwargs(cache_enabled=False)] if self.graph_setting != "off" else []
        self.accelerator = accelerator = Accelerator(
            mixed_precision=self.mixed_precision, kwargs_handlers=handlers,
            log_with=None if cfg.report_to == "none" else cfg.report_to, project_dir=str(self.work_dir / "logs"))
        self.device, self.is_main = accelerator.device, accelerator.is_main_process
        # Derived here, so a batch that does not split over the processes fails before any loading.
        pair_micro_batch, retain_micro_batch = cfg.micro_batch_sizes(accelerator.num_processes)
        self.layout = BatchLayout(pair_micro_batch, retain_micro_batch, cfg.gradient_accumulation_steps,
                                  accelerator.num_processes, accelerator.process_index)
        self.compile_mode = self._decide_compile_mode()
        # The config as this run resolved it: compile_unet is the mode the UNet is compiled in ("auto" decided).
        self.run_cfg = replace(cfg, compile_unet=self.compile_mode, compile_regions=False)
        self.graph_blockers = graph_blockers(self.run_cfg, self.device.type, accelerator.num_processes,
                                             self.mixed_precision, self.inputs.family)
        if self.graph_setting == "on":
            resolve_cuda_graph(self.graph_setting, self.graph_blockers)  # fails here, before any weights load
        self.show_progress = cfg.progress_bar and self.is_main
        self.callbacks = self._default_callbacks() + self.extra_callbacks
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.kernels.allow_tf32
            torch.backends.cudnn.allow_tf32 = self.kernels.allow_tf32
        if self.is_main:
            write_resolved_config(cfg, self.work_dir)

        self.components = load_components(cfg.model, cfg.variant)
        self.prediction_type = cfg.prediction_type or self.components.scheduler_prediction_type
        self.schedule = NoiseSchedule(self.components.alphas_cumprod, self.prediction_type, self.device)

    def _decide_compile_mode(self) -> str:
        """The mode the UNet is compiled in: ``compile_unet`` as set, or for "auto" on CUDA what the auto rule
        decides for this job (training/compile_cache.py; logged with its numbers). Where anything may compile, the
        persistent compile caches are pointed at ``compile_cache_dir`` first."""
        cfg, device = self.cfg, self.device
        candidate = cfg.unet_compile_mode(device.type)
        if candidate == "none":
            return "none"
        model_path = resolve_model_path(cfg.model)
        unet_config = json.loads((model_path / "unet" / "config.json").read_text())
        resolution = model_resolution(model_path)
        vae_config = json.loads((model_path / "vae" / "config.json").read_text())
        latent = resolution // 2 ** (len(vae_config["block_out_channels"]) - 1)
        lora = cfg.lora
        spec = GraphSpec(
            torch_version=torch.__version__,
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            unet_architecture=unet_architecture_hash(model_path),
            pair_micro_batch=self.layout.pair_micro_batch,
            retain_micro_batch=self.layout.retain_micro_batch if cfg.retain.weight > 0 else 0,
            latent_shape=(int(unet_config.get("in_channels", 4)), latent, latent),
            mixed_precision=self.mixed_precision,
            lora=(lora.rank, lora.alpha, tuple(lora.target_modules), lora.dropout, lora.use_dora),
            fused_lora=cfg.fused_lora_setting(),
            gradient_checkpointing=cfg.gradient_checkpointing,
            channels_last=cfg.channels_last,
            reference_in_step=not cfg.uses_reference_cache(),
            backend=self.kernels.compile_backend,
            options=tuple(sorted((k, str(v)) for k, v in self.kernels.compile_options.items())),
        )
        self.compile_cache = CompileCache(cfg.compile_cache_dir or default_compile_cache_dir(), spec)
        environment = self.compile_cache.activate()
        self.accelerator.print(f"compile cache: {self.compile_cache.folder} ("
                               + ", ".join(f"{k}={v}" for k, v in environment.items()) + ")")
        self.job = JobShape(self.inputs.family, latent * latent, cfg.max_train_steps * self.layout.pairs_per_step,
                            not cfg.uses_reference_cache())
        if cfg.compile_unet != "auto":
            return candidate
        decision = decide_step_compile(self.compile_cache, self.job, candidate)
        self.compile_decisions.append(decision)
        self.accelerator.print(f"compile_unet auto: {decision.describe()}")
        return candidate if decision.compile else "none"

    def _default_callbacks(self) -> list[TrainerCallback]:
        files = [MetricFile(self.work_dir / "logs")] if self.is_main else []
        return files + [Tracker(), ProgressBar(self.show_progress)]

    def build_caches(self) -> None:
        """The pair source (cached latents and text embeddings, or live encoding) and the retain source; whether
        the step can be captured, now that it is known where the cache landed."""
        cfg, accelerator, components, device = self.cfg, self.accelerator, self.components, self.device
        for module in [components.vae, *components.text_encoders]:
            module.to(device)
        cache_dir = self.work_dir / "cache"
        self.latent_cache_file: Path | None = None
        if cfg.cache_latents:
            with accelerator.main_process_first():
                tensors, self.latent_cache_file = load_or_build_cache(
                    components, self.inputs.pairs, cache_dir, device, self.is_main, self.show_progress,
                    cfg.latent_cache_precision(device.type))
            self.source = CachedPairSource(components, tensors, device, self._caption_tokens(self.inputs.pairs))
        else:
            self.source = UncachedPairSource(components, self.inputs.pairs, device)
        self.retain_source = None
        if self.inputs.retain is not None:  # always cached: encoded once, whatever cache_latents says
            with accelerator.main_process_first():
                retain_tensors = load_or_build_retain_cache(components, self.inputs.retain, cache_dir, device,
                                                            self.is_main, self.show_progress)
            self.retain_source = CachedRetainSource(components, retain_tensors, device,
                                                    self._caption_tokens(self.inputs.retain))
        if cfg.cache_latents:
            self.graph_blockers += source_blockers(self.source)
        self.use_graph = resolve_cuda_graph(self.graph_setting, self.graph_blockers)
        if device.type == "cuda" and self.graph_setting != "off":
            state = ("on (captured after a few eager warm-up steps)" if self.use_graph
                     else "not used: " + "; ".join(self.graph_blockers))
            accelerator.print(f"cuda_graph: {state}")
        if cfg.cache_latents:
            # Training never touches the VAE again, nor the text encoders unless one is trained: free their memory.
            components.vae = None
            if not cfg.lora.text_encoder_modules:
                components.text_encoders = []

    def _caption_tokens(self, images) -> CaptionTokens | None:
        """Token ids of the captions of ``images`` (pairs or retain images) for the trained text encoder; None
        without one."""
        if not self.cfg.lora.text_encoder_modules:
            return None
        tokenizer = self.components.tokenizers[0]
        trained = self.cfg.lora.text_encoder_risks
        if isinstance(images, PreferencePairs) and trained:
            trains_text = torch.tensor([risk in trained for risk in images.risks()], dtype=torch.bool)
        else:  # every risk's pairs, and retain images always
            trains_text = torch.ones(len(images), dtype=torch.bool)
        return CaptionTokens(caption_token_ids(tokenizer, images.captions()), caption_token_ids(tokenizer, [""])[0],
                             trains_text)

    def build_model(self) -> None:
        """The trained UNet (frozen base weights in the run's precision, fp32 LoRA), its optimiser and LR schedule,
        wrapped by accelerate; then the checkpoint to resume from, if any."""
        cfg, accelerator, device = self.cfg, self.accelerator, self.device
        unet = self.components.unet.to(device)
        if _weight_dtype(self.mixed_precision) != torch.float32:
            unet.to(dtype=_weight_dtype(self.mixed_precision))  # frozen base weights; LoRA stays fp32 (add_lora)
        if cfg.channels_last:
            unet.to(memory_format=torch.channels_last)
        torch.manual_seed(cfg.seed)  # the LoRA A-matrix init
        self.params = add_lora(unet, cfg.lora)
        text = None
        if cfg.lora.text_encoder_modules:
            text = TextEncoderLora(self.components.text_encoders[0].to(device), rank=cfg.lora.rank,
                                   alpha=cfg.lora.alpha, target_modules=cfg.lora.text_encoder_modules)
            self.params += text.trainable_parameters()
        if self.inputs.init_lora is not None:
            init_lora_from(unet, self.inputs.init_lora, cfg.lora, cfg.init_lora)
        if self.inputs.init_text_lora is not None:
            text.load_lora_state(self.inputs.init_text_lora[0])
        self.fused_lora_layers = install_fused_lora(unet) if self.run_cfg.use_fused_lora(device.type) else 0
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        # After LoRA and checkpointing are in place, before accelerate wraps the module (DDP): the DDP
        # forward (policy) and the unwrapped module (reference) then both reach the compiled code.
        compile_unet(unet, self.compile_mode, self.kernels.compile_backend, dict(self.kernels.compile_options))
        unet.train()
        self.optimizer, self.lr_scheduler = self._build_optimizer()
        if text is None:
            self.unet, self.optimizer = accelerator.prepare(unet, self.optimizer)
            self.text_encoder = self.text_lora = None
        else:
            self.unet, self.text_encoder, self.optimizer = accelerator.prepare(unet, text, self.optimizer)
            self.text_lora = accelerator.unwrap_model(self.text_encoder)
        flags = optimizer_flags(self.optimizer)
        self.per_pair = {name: values.to(device) for name, values in self.inputs.per_pair.items()}
        self.model = StepModel(self.unet, accelerator.unwrap_model(self.unet), self.schedule, accelerator.autocast,
                               cfg.channels_last, self.text_encoder)
        self.objective = DpoObjective.from_config(cfg)
        self.latent_shape = (int(self.model.unwrapped.config.in_channels), self.components.latent_size,
                             self.components.latent_size)
        self.digest = config_digest(cfg)

        self.resume_from = resolve_resume(cfg.resume, self.checkpoint_root)
        if self.resume_from is not None:
            self.start_step = load_checkpoint(self.resume_from, self.model.unwrapped, self.optimizer,
                                              self.lr_scheduler, accelerator.scaler, self.digest, self.text_lora)
            restore_optimizer_flags(self.optimizer, flags)  # the checkpoint's may be another run's (graphed or eager)
            accelerator.print(f"resumed from {self.resume_from} at step {self.start_step}")

    def _build_optimizer(self):
        """AdamW (fused on CUDA unless ``fused_optimizer`` says otherwise) and the LR scheduler; ``capturable``
        for a CUDA-graph step (training/graph.py), which torch refuses to capture otherwise."""
        cfg = self.cfg
        fused = cfg.fused_optimizer if cfg.fused_optimizer is not None else self.device.type == "cuda"
        optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
            fused=fused,
            capturable=self.use_graph,
        )
        # Stepped by us once per optimiser step (not prepared by accelerate, which would step it once per
        # process): the LR curve is then the same for any number of processes.
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.max_train_steps
        )
        return optimizer, lr_scheduler

    def compute_reference_errors(self) -> None:
        """With ``train.reference_cache``: the (S, E, 2) reference errors of every optimiser step on the device,
        read from or added to this run's reference-loss file (training/reference_cache.py); each process computes
        its own micro-slices of each step. The key reuses the latent cache file's name, which holds the latent
        cache's key (encoders, set, resolution, pairs), rather than hashing again."""
        cfg, accelerator, device, layout = self.cfg, self.accelerator, self.device, self.layout
        if not cfg.uses_reference_cache():
            return
        key = reference_cache_key(model_fingerprint(cfg.model, subfolders=("unet", "scheduler")),
                                  self.latent_cache_file.stem, cfg.seed, layout.pairs_per_step, cfg.prompt_dropout,
                                  self.prediction_type, self.mixed_precision)
        path = reference_cache_path(cfg.reference_cache_dir or self.work_dir / "cache", key)
        existing = read_reference_errors(path, layout.pairs_per_step)
        # Every process has read the file before the main one rewrites it, and all keep the rows all of them have (a
        # node that cannot see the main one's folder computes from 0, and so must everyone: each step's gather is
        # collective).
        rows_everywhere = accelerator.gather(torch.tensor([existing.shape[0]], device=device)).min()
        existing = existing[: int(rows_everywhere)]

        def compute_step(step: int) -> torch.Tensor:
            draws = self.draw_pairs(step, device)
            parts = [layout.pair_slice(draws, a) for a in range(layout.accumulation)]
            local = torch.stack([reference_pair_errors(self.model, self.source.batch(part), part)
                                 for part in parts])  # (A, B, 2)
            return gather_step_errors(local, accelerator.gather, layout.processes)

        save_rows = (lambda rows: write_reference_errors(path, rows)) if self.is_main else None
        compiled = self._reference_pass_compiles(cfg.max_train_steps - int(existing.shape[0]))
        # torch.compiler.set_stance (torch >= 2.6) runs every compiled function eagerly without compiling.
        eager = (torch.compiler.set_stance("force_eager") if not compiled and hasattr(torch.compiler, "set_stance")
                 else contextlib.nullcontext())
        with eager:
            errors, reused, seconds, rate = extend_reference_errors(existing, cfg.max_train_steps, compute_step,
                                                                    device, save_rows, self.show_progress)
        accelerator.wait_for_everyone()
        self.reference_errors = errors.to(device)
        self.reference_pass = ReferencePass(str(path), reused, cfg.max_train_steps - reused, seconds, rate)
        self._note_reference_pass(compiled)

    def _reference_pass_compiles(self, rows_to_compute: int) -> bool:
        """Whether the reference pass runs the compiled UNet (compiling its adapter-off graph first) or eager: the
        auto rule on the rows it computes, whenever the UNet is compiled (the numbers are the same up to kernel
        rounding either way)."""
        if self.compile_mode == "none" or rows_to_compute <= 0:
            return False
        decision = decide_reference_compile(self.compile_cache, self.job, self.compile_mode, rows_to_compute,
                                            self.layout.pairs_per_step)
        self.compile_decisions.append(decision)
        self.accelerator.print(f"compile_unet {self.cfg.compile_unet}: {decision.describe()}")
        return decision.compile

    def _note_reference_pass(self, compiled: bool) -> None:
        """The pass's measured rate (and compile seconds) into the compile record, for later auto decisions."""
        ref = self.reference_pass
        if self.compile_cache is None or ref.steps_computed < 2 or not ref.pairs_per_s:
            return
        pairs_per_step = self.layout.pairs_per_step
        step_s = pairs_per_step / ref.pairs_per_s
        first_step_s = ref.seconds - (ref.steps_computed - 1) * step_s
        if compiled:
            mode = f"reference:{self.compile_mode}"
            warm = self.compile_cache.is_warm(mode)
            self.timeline["reference_compile_s"] = max(first_step_s - step_s, 0.0)
            self.compile_cache.note_compile(mode, self.timeline["reference_compile_s"], 1 / ref.pairs_per_s, warm)
        else:
            self.compile_cache.note_rate("reference:none", 1 / ref.pairs_per_s)

    def build_step(self) -> None:
        """The step's form (eager, captured, or the static-input form; callbacks may ask for the last) and, on the
        graph path, the CapturedStep that runs it. The graph path draws on the host and copies into its static
        inputs itself."""
        form = StepForm(capture=self.use_graph, static_inputs=self.use_graph)
        self._fire("on_step_form", form)
        self.captured_step = None
        if form.graph_path:
            self.captured_step = CapturedStep(self._static_step_body, self.optimizer, self.device,
                                              capture=form.capture)
        self.draw_device = torch.device("cpu") if self.captured_step is not None else self.device

    def run_steps(self) -> dict | None:
        """Optimiser steps ``start_step`` .. ``max_train_steps`` - 1 with their logs and checkpoints; returns
        ``{"stopped_at": done}`` when a callback stopped the run, else None."""
        self._fire("on_steps_begin")
        self.clock = IntervalClock()
        stopped = None
        done = self.start_step
        for step in range(self.start_step, self.cfg.max_train_steps):
            self._fire("on_step_begin", step)
            self.step(step)
            done = step + 1
            self.clock.steps += 1
            if done == self.start_step + 1:
                self._first_step_done()
            control = self._scheduled_control(done)
            self._fire("on_step_end", done, control)
            if control.log or control.checkpoint:
                self._log(done)
            if control.checkpoint:
                self.save_checkpoint(done)
            if control.stop:
                stopped = {"stopped_at": done}
                break
        self._fire("on_steps_end", done)
        self._note_steps()
        return stopped

    def _first_step_done(self) -> None:
        """Timestamp the first optimiser step (one host sync: the time is the GPU's, not the launch queue's)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timeline["first_step_done"] = self.since_start()
        self.first_step_s = time.perf_counter() - self.clock.start

    def _note_steps(self) -> None:
        """The loop's steady rate and the first step's compile seconds into the compile record (main process),
        and the compiled graphs into torch's cache artifacts."""
        if self.compile_cache is None or len(self.clock.timed) < 2 or not self.is_main:
            return
        pairs_per_step = self.layout.pairs_per_step
        s_per_pair = 1 / max(self.clock.steady_pairs_per_s(pairs_per_step), 1e-9)
        if self.compile_mode == "none":
            self.compile_cache.note_rate("none", s_per_pair)
        else:
            warm = self.compile_cache.is_warm(self.compile_mode)
            self.timeline["step_compile_s"] = max(self.first_step_s - s_per_pair * pairs_per_step, 0.0)
            self.compile_cache.note_compile(self.compile_mode, self.timeline["step_compile_s"], s_per_pair, warm)
            self.compile_cache.save_artifacts(self.compile_mode)
        self.compile_cache.write_record()

    def save(self, summary: dict) -> None:
        """The output folder, all or nothing (main process)."""
        if self.is_main:
            self._write_output(summary)
        self.accelerator.wait_for_everyone()

    # --- one optimiser step ----------------------------------------------------------------------------------------

    def draw_pairs(self, step: int, device) -> StepDraws:
        """The E pairs, noise, timesteps and prompt-dropout flags of optimiser step ``step`` (training/step.py)."""
        cfg = self.cfg
        return draw_step(step, cfg.seed, self.layout.pairs_per_step, len(self.inputs.pairs), self.latent_shape,
                         self.schedule.num_train_timesteps, cfg.prompt_dropout, device)

    def step(self, step: int) -> None:
        """Optimiser step ``step`` (0-based): its draws, the micro-steps' forward and backward, clipping, AdamW and
        the LR scheduler; its metrics go into the accumulator as device tensors (no host sync)."""
        draws = self.draw_pairs(step, self.draw_device)
        if self.reference_errors is not None:
            draws.reference_errors = self.reference_errors[step]  # (E, 2) on the device
        retain_draws = None
        if self.retain_source is not None:
            retain_draws = draw_retain_step(step, self.cfg.seed, self.layout.retain_per_step, len(self.retain_source),
                                            self.latent_shape, self.schedule.num_train_timesteps, self.draw_device)
        if self.captured_step is not None:
            names, values = self.captured_step(draws, retain_draws)  # (M,) on the device; grad_norm included
            self.lr_scheduler.step()
            self.accumulator.add_vector(names, values)
        else:
            grad_norm = self._accumulate_and_step(
                draws, retain_draws, lambda metrics, weight: self.accumulator.add(metrics, weight=weight))
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.accumulator.add({"grad_norm": grad_norm})
        self.accumulator.end_step()

    def _accumulate_and_step(self, draws: StepDraws, retain_draws: StepDraws | None,
                             on_metrics: Callable[[dict[str, torch.Tensor], float], None]) -> torch.Tensor:
        """Accumulate gradients over the micro-steps of one optimiser step, clip, ``optimizer.step()``.
        ``on_metrics(metrics, weight)`` receives each micro-step's metric tensors and 1/accumulation. Returns the
        pre-clipping gradient norm (a 0-dim device tensor: no host sync). The eager step and the CUDA-graph step
        both run this; neither the LR scheduler nor zero_grad is in here."""
        cfg, accelerator, layout = self.cfg, self.accelerator, self.layout
        accum = layout.accumulation
        for micro_step in range(accum):
            part = layout.pair_slice(draws, micro_step)
            retain = None
            if self.retain_source is not None:
                retain_part = layout.retain_slice(retain_draws, micro_step)
                retain = (self.retain_source.batch(retain_part), retain_part)
            # Gradients are all-reduced only on the last micro-step of an optimiser step.
            with contextlib.ExitStack() as sync:
                if micro_step < accum - 1:
                    for module in (self.unet, self.text_encoder):
                        if module is not None:
                            sync.enter_context(accelerator.no_sync(module))
                loss, metrics = dpo_loss_on_batch(
                    self.model, self.source.batch(part), part, self.objective, retain,
                    {name: values[part.indices] for name, values in self.per_pair.items()},
                )
                accelerator.backward(loss / accum)  # mean over the optimiser step's pairs
            on_metrics(metrics, 1.0 / accum)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = accelerator.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        return grad_norm

    def _static_step_body(self, draws: StepDraws, retain_draws: StepDraws | None) -> tuple[tuple[str, ...],
                                                                                            torch.Tensor]:
        """The step that training/graph.py captures: :meth:`_accumulate_and_step` on the static draws, its metrics
        (weighted by 1/accumulation and summed over micro-steps, as MetricAccumulator.add does) and the
        pre-clipping gradient norm stacked into one (M,) float32 tensor, the graph's static output."""
        collected: list[tuple[dict[str, torch.Tensor], float]] = []
        grad_norm = self._accumulate_and_step(draws, retain_draws,
                                              lambda metrics, weight: collected.append((metrics, weight)))
        names = tuple(collected[0][0])
        total = None
        for metrics, weight in collected:
            part = torch.stack([metrics[name].detach().float() for name in names]) * weight  # (M - 1,)
            total = part if total is None else total + part
        return names + ("grad_norm",), torch.cat([total, grad_norm.detach().float().view(1)])  # (M,)

    # --- logs, checkpoints, output ---------------------------------------------------------------------------------

    def _scheduled_control(self, done: int) -> StepControl:
        """The config's schedule after ``done`` steps: a checkpoint every ``checkpoint_every`` steps (not at the
        last, whose output folder holds the LoRA), a log record every ``log_every`` steps, at checkpoints and at
        the last step."""
        cfg = self.cfg
        last = done == cfg.max_train_steps
        checkpoint = cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0 and not last
        return StepControl(log=done % cfg.log_every == 0 or checkpoint or last, checkpoint=checkpoint)

    def _log(self, done: int) -> None:
        """Reduce the metrics since the last record (the loop's only host sync), stop on a non-finite loss, hand
        the record to the callbacks."""
        values = self.accumulator.reduce(self.accelerator)
        steps, elapsed = self.clock.close()
        values["lr"] = self.lr_scheduler.get_last_lr()[0]
        values["pairs_per_s"] = steps * self.layout.pairs_per_step / max(elapsed, 1e-9)
        values["pairs_per_s_wall"] = self.pairs_per_s_wall(done, self.since_start())
        if not all_finite({"loss": values.get("loss", 0.0)}):
            good = list_checkpoints(self.checkpoint_root)
            raise TrainingDiverged(
                f"loss became {values['loss']} between steps {done - steps} and {done}; stopped. "
                f"Last good checkpoint: {good[-1] if good else 'none'} (lower learning_rate or beta, or use bf16)"
            )
        self.last_values = values
        self._fire("on_log", done, values)
        self.clock.restart()

    def save_checkpoint(self, done: int) -> None:
        if self.is_main:
            save_checkpoint(self.checkpoint_root, done, self.model.unwrapped, self.optimizer, self.lr_scheduler,
                            self.accelerator.scaler, self.digest, self.text_lora)
            prune_checkpoints(self.checkpoint_root, self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def summary(self) -> dict:
        """``training_summary.json``: what ran, how fast, the final metrics."""
        cfg, inputs, layout = self.cfg, self.inputs, self.layout
        return {
            "steps": cfg.max_train_steps,
            "pairs_per_step": layout.pairs_per_step,
            "processes": layout.processes,
            "micro_batch_per_process": {"pairs": layout.pair_micro_batch, "retain_images": layout.retain_micro_batch},
            "mixed_precision": self.mixed_precision,
            "cuda_graph": self.use_graph,
            "fused_lora_layers": self.fused_lora_layers,
            "reference_cache": self.reference_pass.as_dict() if self.reference_pass is not None else None,
            "prediction_type": self.prediction_type,
            "pairs_per_s": self.clock.steady_pairs_per_s(layout.pairs_per_step),
            "pairs_per_s_wall": self.pairs_per_s_wall(cfg.max_train_steps,
                                                      self.timeline.get("steps_done", self.since_start())),
            "compile": {
                "setting": cfg.compile_unet, "mode": self.compile_mode,
                "decisions": [d.as_dict() for d in self.compile_decisions],
                "cache": (None if self.compile_cache is None else
                          {"folder": str(self.compile_cache.folder), **self.compile_cache.environment}),
            },
            "timeline_s": self._timeline_s(),
            "data": inputs.pairs.counts(),
            "pair_visits_per_epoch": len(inputs.pairs),
            "retain": ({"images": len(inputs.retain), "set_hash": inputs.retain.set_hash, "weight": cfg.retain.weight}
                       if inputs.retain is not None else None),
            "set_hash": inputs.pairs.set_hash,
            "final_metrics": self.last_values,
            "resumed_from": str(self.resume_from) if self.resume_from else None,
            "phase_seconds": dict(self.phase_seconds),  # the phases before save
        }

    def _timeline_s(self) -> dict[str, float]:
        """Seconds since process start at which each phase ended and the first step was done, with the phase
        durations a cost model scales: latent_cache_s (once per pair), reference_pass_s (per pair visit), and the
        compile seconds estimated from the first steps (step_compile_s, reference_compile_s)."""
        timeline = {name: round(value, 3) for name, value in self.timeline.items()}
        timeline["latent_cache_s"] = round(self.phase_seconds.get("caches", 0.0), 3)
        timeline["reference_pass_s"] = round(self.phase_seconds.get("reference_pass", 0.0), 3)
        return timeline

    def _write_output(self, summary: dict) -> None:
        """All or nothing: the output folder appears complete or not at all."""
        cfg, family, pairs = self.cfg, self.inputs.family, self.inputs.pairs
        with atomic_directory(cfg.output_dir, overwrite=True) as tmp:
            save_lora(tmp, self.model.unwrapped, family, self.text_lora.encoder if self.text_lora else None)
            write_marker(tmp, "lora")
            write_resolved_config(cfg, tmp)
            atomic_write_json(tmp / "training_summary.json", summary)
            metrics_file = self.work_dir / "logs" / "metrics.jsonl"
            if metrics_file.is_file():
                shutil.copyfile(metrics_file, tmp / "metrics.jsonl")
            atomic_write_text(tmp / "README.md", render_model_card(cfg, family, pairs.counts(), pairs.set_hash,
                                                                   summary))
            if cfg.export_merged_unet:
                export_merged_unet(cfg.model, tmp, tmp / "unet_merged", variant=cfg.variant)
