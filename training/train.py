"""LoRA Diffusion-DPO training: ``python -m training.train --config configs/demo.yaml [--key value | key=value ...]``.

Reads ``train.data`` (a preference set), writes ``train.output_dir`` (``pytorch_lora_weights.safetensors``,
README.md model card, resolved config, metrics) atomically at the end; checkpoints, the latent cache and
logs live in ``train.work_dir``. Multi-GPU/multi-node: run the same module under ``accelerate launch``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.cli import StageCLI, run_main
from core.config import config_name, load_stage_config, to_dict, write_resolved_config
from core.errors import ConfigError, PipelineError
from core.io import atomic_directory, atomic_write_json, atomic_write_text, stable_key
from core.models import check_model_dir, resolve_model_path
from core.output_dir import check_output_dir, write_marker
from training.cache import (
    CachedPairSource, CachedRetainSource, UncachedPairSource, components_fingerprint, load_or_build_cache,
    load_or_build_retain_cache,
)
from training.card import render_model_card
from training.checkpoints import list_checkpoints, load_checkpoint, prune_checkpoints, resolve_resume, save_checkpoint
from training.compile import compile_unet
from training.config import TrainConfig, resolve_paths
from training.data import load_pairs, load_retain, model_resolution
from training.fused_lora import install_fused_lora
from training.graph import (
    CapturedStep, graph_blockers, optimizer_flags, resolve_cuda_graph, restore_optimizer_flags, source_blockers,
)
from training.lora import add_lora, export_merged_unet, init_lora_from, read_lora_file, save_lora
from training.metrics import MetricAccumulator, MetricLogger, all_finite
from training.models import NoiseSchedule, load_components
from training.reference_cache import (
    ReferencePass, extend_reference_errors, gather_step_errors, read_reference_errors, reference_cache_key,
    reference_cache_path, write_reference_errors,
)
from training.step import (
    draw_retain_step, draw_step, dpo_loss_on_batch, reference_pair_errors,
)


class TrainingDiverged(PipelineError):
    """The loss became NaN/inf; the run stops and keeps its last good checkpoint."""


# Fields that do not change what is trained; a checkpoint may be resumed under different values.
# compile_unet / compile_backend / cuda_graph / fused_lora change kernels or how they are launched (rounding at most),
# not the objective; leaving them out also keeps the digest of checkpoints written before they existed, and lets a
# run resume graphed from an eager checkpoint and back. (compile_regions predates this and stays in.) reference_cache
# moves the reference pass before the loop; the reference losses are the same numbers (training/reference_cache.py).
_BOOKKEEPING = {"resume", "log_every", "checkpoint_every", "keep_checkpoints", "report_to", "progress_bar",
                "export_merged_unet", "output_dir", "work_dir", "compile_unet", "compile_backend", "cuda_graph",
                "fused_lora", "reference_cache", "reference_cache_dir", "overwrite"}


# Objective fields added after checkpoints were first written: at their default they stay out of the digest,
# so those checkpoints still resume (a non-default value does change what is trained and is included).
# (Three objective fields removed later, TrainConfig.REMOVED_KEYS, were listed here too: at their defaults they
# were left out of the digest, so the digests of configs that never set them are unchanged.)
_LATER_DEFAULTS = {"init_lora": None, "pairs_per_step": None, "rpo_alpha": 0.0, "rpo_alpha_per_risk": {},
                   "rpo_rejected_share": 0.0, "rpo_rejected_share_per_risk": {}, "variant": None}
_LATER_RETAIN_DEFAULTS = {"images_per_step": None}


def config_digest(cfg: TrainConfig) -> str:
    fields = {k: v for k, v in to_dict(cfg).items() if k not in _BOOKKEEPING}
    for key, default in _LATER_DEFAULTS.items():
        if fields.get(key) == default:
            del fields[key]
    retain = fields.get("retain", {})
    for key, default in _LATER_RETAIN_DEFAULTS.items():
        if retain.get(key, default) == default:
            retain.pop(key, None)
    return stable_key(fields)


def resolve_mixed_precision(setting: str) -> str:
    """Our setting -> accelerate's ("no", "fp16", "bf16")."""
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU (use bf16 or fp32 on CPU)")
    return "no" if setting == "fp32" else setting


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def _check_inputs(cfg: TrainConfig):
    """Everything that can fail on bad input, before any weights are loaded or a GPU is touched."""
    check_output_dir(cfg.output_dir, cfg.overwrite, "train.output_dir", keep=[
        ("train.work_dir", cfg.work_dir), ("train.data", cfg.data), ("train.retain.data", cfg.retain.data),
        ("train.reference_cache_dir", cfg.reference_cache_dir)])
    family = check_model_dir(cfg.model, cfg.variant)
    resolution = model_resolution(resolve_model_path(cfg.model))
    pairs = load_pairs(cfg.data, resolution, cfg.max_pairs)
    per_pair = _per_pair_options(cfg, pairs)
    # Read here, so a missing or unreadable LoRA fails before any weights load; used after add_lora.
    init_lora = read_lora_file(cfg.init_lora) if cfg.init_lora else None
    retain = load_retain(cfg.retain.data, resolution) if cfg.retain.weight > 0 else None
    return family, resolution, pairs, per_pair, init_lora, retain


def _check_risks_present(option: str, named: list[str], pairs, data: str) -> None:
    present = sorted(set(pairs.risks()))
    unknown = sorted(set(named) - set(present))
    if unknown:
        raise ConfigError(f"train.{option} names risk(s) {unknown} that {data} does not hold; its risks: {present}")


def _per_pair_options(cfg: TrainConfig, pairs) -> dict[str, torch.Tensor]:
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


def _build_optimizer(cfg: TrainConfig, params, device: torch.device, capturable: bool = False):
    """AdamW (fused on CUDA unless ``fused_optimizer`` says otherwise) and the LR scheduler. ``capturable``:
    for a CUDA-graph step (training/graph.py), which torch refuses to capture otherwise."""
    from diffusers.optimization import get_scheduler

    fused = cfg.fused_optimizer if cfg.fused_optimizer is not None else device.type == "cuda"
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
        fused=fused,
        capturable=capturable,
    )
    # Stepped by us once per optimiser step (not prepared by accelerate, which would step it once per
    # process): the LR curve is then the same for any number of processes.
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.max_train_steps
    )
    return optimizer, lr_scheduler


def _reference_pass(cfg: TrainConfig, accelerator, latent_cache_file: Path, pairs, unwrapped, source, schedule,
                    prediction_type: str, mixed_precision: str, micro_batches: tuple[int, int], latent_shape,
                    show: bool) -> tuple[torch.Tensor, ReferencePass]:
    """(S, E, 2) reference errors of every optimiser step on the device, read from or added to this run's
    reference-loss file (training/reference_cache.py); each process computes its own micro-slices of each step.
    ``micro_batches``: (pairs per micro-batch, E pairs per step). ``latent_cache_file``'s name holds the latent
    cache's key (encoders, set, resolution, pairs), which the reference key reuses rather than hashing again."""
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    pair_micro_batch, pairs_per_step = micro_batches
    key = reference_cache_key(components_fingerprint(cfg.model, ("unet", "scheduler")), latent_cache_file.stem,
                              cfg.seed, pairs_per_step, cfg.prompt_dropout, prediction_type, mixed_precision)
    path = reference_cache_path(cfg.reference_cache_dir or Path(cfg.work_dir) / "cache", key)
    existing = read_reference_errors(path, pairs_per_step)
    # Every process has read the file before the main one rewrites it, and all keep the rows all of them have (a
    # node that cannot see the main one's folder computes from 0, and so must everyone: each step's gather is
    # collective).
    rows_everywhere = accelerator.gather(torch.tensor([existing.shape[0]], device=device)).min()
    existing = existing[: int(rows_everywhere)]

    def compute_step(step: int) -> torch.Tensor:
        draws = draw_step(step, cfg.seed, pairs_per_step, len(pairs), latent_shape, schedule.num_train_timesteps,
                          cfg.prompt_dropout, device)
        parts = [draws.micro_slice(a, rank, world, pair_micro_batch) for a in range(cfg.gradient_accumulation_steps)]
        local = torch.stack([reference_pair_errors(unwrapped, source.batch(part), part, schedule, accelerator.autocast,
                                                   cfg.channels_last) for part in parts])  # (A, B, 2)
        return gather_step_errors(local, accelerator.gather, world)

    save_rows = (lambda rows: write_reference_errors(path, rows)) if accelerator.is_main_process else None
    errors, reused, seconds, rate = extend_reference_errors(existing, cfg.max_train_steps, compute_step, device,
                                                            save_rows, show)
    accelerator.wait_for_everyone()
    return errors.to(device), ReferencePass(str(path), reused, cfg.max_train_steps - reused, seconds, rate)


def _accumulate_and_step(cfg, accelerator, unet, unwrapped, source, draws, schedule, params, optimizer,
                         micro_batches: tuple[int, int], retain_source, retain_draws, per_pair: dict[str, torch.Tensor],
                         on_metrics) -> torch.Tensor:
    """Accumulate gradients over the micro-steps of one optimiser step, clip, ``optimizer.step()``.
    ``micro_batches``: (pairs, retain images) per process per micro-step (``TrainConfig.micro_batch_sizes``).
    ``on_metrics(metrics, weight)`` receives each micro-step's metric tensors and 1/accumulation. Returns the
    pre-clipping gradient norm (a 0-dim device tensor: no host sync). The eager step and the CUDA-graph step
    (training/graph.py) both run this; neither the LR scheduler nor zero_grad is in here."""
    accum = cfg.gradient_accumulation_steps
    pair_micro_batch, retain_micro_batch = micro_batches
    for micro_step in range(accum):
        part = draws.micro_slice(micro_step, accelerator.process_index, accelerator.num_processes,
                                 pair_micro_batch)
        # Gradients are all-reduced only on the last micro-step of an optimiser step.
        retain = None
        if retain_source is not None:
            retain_part = retain_draws.micro_slice(micro_step, accelerator.process_index, accelerator.num_processes,
                                                   retain_micro_batch)
            retain = (retain_source.batch(retain_part), retain_part)
        sync = contextlib.nullcontext() if micro_step == accum - 1 else accelerator.no_sync(unet)
        with sync:
            loss, metrics = dpo_loss_on_batch(
                unet, unwrapped, source.batch(part), part, schedule, cfg.beta, cfg.loss_type,
                accelerator.autocast, cfg.channels_last, retain, cfg.retain.weight, cfg.retain.target,
                **{name: values[part.indices] for name, values in per_pair.items()},
            )
            accelerator.backward(loss / accum)  # mean over the optimiser step's pairs
        on_metrics(metrics, 1.0 / accum)
    grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
    optimizer.step()
    return grad_norm


def _optimizer_step(cfg, accelerator, unet, unwrapped, source, draws, schedule, params, optimizer, lr_scheduler,
                    accumulator: MetricAccumulator, micro_batches: tuple[int, int], retain_source,
                    retain_draws, per_pair: dict[str, torch.Tensor]) -> torch.Tensor:
    """The eager optimiser step: :func:`_accumulate_and_step`, then the LR scheduler and zero_grad. Returns the
    pre-clipping gradient norm (a device tensor: no host sync)."""
    grad_norm = _accumulate_and_step(cfg, accelerator, unet, unwrapped, source, draws, schedule, params, optimizer,
                                     micro_batches, retain_source, retain_draws, per_pair,
                                     lambda metrics, weight: accumulator.add(metrics, weight=weight))
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _static_step_body(cfg, accelerator, unet, unwrapped, source, schedule, params, optimizer,
                      micro_batches: tuple[int, int], retain_source, per_pair: dict[str, torch.Tensor]):
    """The step that training/graph.py captures: :func:`_accumulate_and_step` on the static draws, its metrics
    (weighted by 1/accumulation and summed over micro-steps, as MetricAccumulator.add does) and the
    pre-clipping gradient norm stacked into one (M,) float32 tensor, the graph's static output."""

    def body(draws, retain_draws):
        collected: list[tuple[dict[str, torch.Tensor], float]] = []
        grad_norm = _accumulate_and_step(cfg, accelerator, unet, unwrapped, source, draws, schedule, params,
                                         optimizer, micro_batches, retain_source, retain_draws, per_pair,
                                         lambda metrics, weight: collected.append((metrics, weight)))
        names = tuple(collected[0][0])
        total = None
        for metrics, weight in collected:
            part = torch.stack([metrics[name].detach().float() for name in names]) * weight  # (M - 1,)
            total = part if total is None else total + part
        return names + ("grad_norm",), torch.cat([total, grad_norm.detach().float().view(1)])  # (M,)

    return body


def train(cfg: TrainConfig, stop_at_step: int | None = None, static_step: bool = False) -> dict:
    """Run (or resume) training; return the summary. ``stop_at_step`` simulates a crash (tests).
    ``static_step`` (tests): where the step is not CUDA-graph captured, run the graph path's static-input step
    eagerly anyway (training/graph.py with capture off), to compare it with the eager step on a CPU."""
    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs

    family, resolution, pairs, per_pair, init_lora, retain = _check_inputs(cfg)
    _check_tracker(cfg.report_to)
    mixed_precision = resolve_mixed_precision(cfg.mixed_precision)
    graph_setting = cfg.cuda_graph_setting()
    # A cast cached by autocast while capturing would be a graph-pool tensor reused outside the graph; without
    # the cache the same casts run every forward, with the same values (training/graph.py).
    handlers = [AutocastKwargs(cache_enabled=False)] if graph_setting != "off" else []
    work_dir = Path(cfg.work_dir)
    accelerator = Accelerator(mixed_precision=mixed_precision, kwargs_handlers=handlers,
                              log_with=None if cfg.report_to == "none" else cfg.report_to,
                              project_dir=str(work_dir / "logs"))
    device, is_main = accelerator.device, accelerator.is_main_process
    blockers = graph_blockers(cfg, device.type, accelerator.num_processes, mixed_precision, family)
    if graph_setting == "on":
        resolve_cuda_graph(graph_setting, blockers)  # fails here, before any weights load
    # Derived here, so a batch that does not split over the processes fails before any loading.
    pair_micro_batch, retain_micro_batch = cfg.micro_batch_sizes(accelerator.num_processes)
    show = cfg.progress_bar and is_main
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    checkpoint_root = work_dir / "checkpoints"
    if is_main:
        write_resolved_config(cfg, work_dir)

    components = load_components(cfg.model, cfg.variant)
    prediction_type = cfg.prediction_type or components.scheduler_prediction_type
    schedule = NoiseSchedule(components.alphas_cumprod, prediction_type, device)
    for module in [components.vae, *components.text_encoders]:
        module.to(device)
    if cfg.cache_latents:
        with accelerator.main_process_first():
            tensors, latent_cache_file = load_or_build_cache(components, pairs, work_dir / "cache", device, is_main,
                                                             show)
        source = CachedPairSource(components, tensors, device)
    else:
        source = UncachedPairSource(components, pairs, device)
    retain_source = None
    if retain is not None:  # always cached: encoded once, whatever cache_latents says
        with accelerator.main_process_first():
            retain_tensors = load_or_build_retain_cache(components, retain, work_dir / "cache", device, is_main, show)
        retain_source = CachedRetainSource(components, retain_tensors, device)
    if cfg.cache_latents:
        blockers += source_blockers(source)  # where the cache landed is known only now
    use_graph = resolve_cuda_graph(graph_setting, blockers)
    if device.type == "cuda" and graph_setting != "off":
        state = "on (captured after a few eager warm-up steps)" if use_graph else "off: " + "; ".join(blockers)
        accelerator.print(f"cuda_graph: {state}")
    if cfg.cache_latents:
        # Training never touches the VAE or text encoders again: free their memory.
        components.vae = None
        components.text_encoders = []

    unet = components.unet.to(device)
    if _weight_dtype(mixed_precision) != torch.float32:
        unet.to(dtype=_weight_dtype(mixed_precision))  # frozen base weights; LoRA stays fp32 (add_lora)
    if cfg.channels_last:
        unet.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.seed)  # the LoRA A-matrix init
    params = add_lora(unet, cfg.lora)
    if init_lora is not None:
        init_lora_from(unet, init_lora, cfg.lora, cfg.init_lora)
    fused_lora_layers = install_fused_lora(unet) if cfg.use_fused_lora(device.type) else 0
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    # After LoRA and checkpointing are in place, before accelerate wraps the module (DDP): the DDP
    # forward (policy) and the unwrapped module (reference) then both reach the compiled code.
    compile_unet(unet, cfg.unet_compile_mode(device.type), cfg.compile_backend, dict(cfg.compile_options))
    unet.train()
    optimizer, lr_scheduler = _build_optimizer(cfg, params, device, capturable=use_graph)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    flags = optimizer_flags(optimizer)
    per_pair = {name: values.to(device) for name, values in per_pair.items()}
    unwrapped = accelerator.unwrap_model(unet)
    digest = config_digest(cfg)

    start_step = 0
    resume_from = resolve_resume(cfg.resume, checkpoint_root)
    if resume_from is not None:
        start_step = load_checkpoint(resume_from, unwrapped, optimizer, lr_scheduler, accelerator.scaler, digest)
        restore_optimizer_flags(optimizer, flags)  # the checkpoint's may be another run's (graphed or eager)
        accelerator.print(f"resumed from {resume_from} at step {start_step}")

    logger = MetricLogger(work_dir / "logs") if is_main else None
    if logger is not None:
        logger.truncate_after(start_step)
    _start_tracker(cfg, accelerator, work_dir / "logs")
    world = accelerator.num_processes
    pairs_per_step = pair_micro_batch * cfg.gradient_accumulation_steps * world
    latent_shape = (int(unwrapped.config.in_channels), components.latent_size, components.latent_size)

    reference_errors, reference_pass = None, None
    if cfg.uses_reference_cache():
        reference_errors, reference_pass = _reference_pass(
            cfg, accelerator, latent_cache_file, pairs, unwrapped, source, schedule, prediction_type, mixed_precision,
            (pair_micro_batch, pairs_per_step), latent_shape, show)

    # The graph path: one captured step (use_graph), or in tests its static-input form run eagerly.
    captured_step = None
    if use_graph or static_step:
        body = _static_step_body(cfg, accelerator, unet, unwrapped, source, schedule, params, optimizer,
                                 (pair_micro_batch, retain_micro_batch), retain_source, per_pair)
        captured_step = CapturedStep(body, optimizer, device, capture=use_graph)
    # The graph path draws on the host and copies into its static inputs itself.
    draw_device = torch.device("cpu") if captured_step is not None else device

    accumulator = MetricAccumulator()
    progress = tqdm(total=cfg.max_train_steps, initial=start_step, desc="train", disable=not show)
    last_values: dict[str, float] = {}
    interval_start, interval_steps, timed = time.perf_counter(), 0, []
    for step in range(start_step, cfg.max_train_steps):
        draws = draw_step(step, cfg.seed, pairs_per_step, len(pairs), latent_shape,
                          schedule.num_train_timesteps, cfg.prompt_dropout, draw_device)
        if reference_errors is not None:
            draws.reference_errors = reference_errors[step]  # (E, 2) on the device
        retain_draws = None
        if retain_source is not None:
            retain_draws = draw_retain_step(step, cfg.seed, retain_micro_batch * cfg.gradient_accumulation_steps
                                            * world, len(retain_source), latent_shape, schedule.num_train_timesteps,
                                            draw_device)
        if captured_step is not None:
            names, values = captured_step(draws, retain_draws)  # (M,) on the device; grad_norm included
            lr_scheduler.step()
            accumulator.add_vector(names, values)
        else:
            grad_norm = _optimizer_step(cfg, accelerator, unet, unwrapped, source, draws, schedule, params,
                                        optimizer, lr_scheduler, accumulator, (pair_micro_batch, retain_micro_batch),
                                        retain_source, retain_draws, per_pair)
            accumulator.add({"grad_norm": grad_norm})
        accumulator.end_step()
        done = step + 1
        interval_steps += 1
        progress.update(1)

        checkpoint_now = cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0 and done < cfg.max_train_steps
        if done % cfg.log_every == 0 or checkpoint_now or done == cfg.max_train_steps or done == stop_at_step:
            values = accumulator.reduce(accelerator)  # the only host sync of the loop
            elapsed = time.perf_counter() - interval_start
            values["lr"] = lr_scheduler.get_last_lr()[0]
            values["pairs_per_s"] = interval_steps * pairs_per_step / max(elapsed, 1e-9)
            timed.append((interval_steps, elapsed))
            if not all_finite({"loss": values.get("loss", 0.0)}):
                good = list_checkpoints(checkpoint_root)
                raise TrainingDiverged(
                    f"loss became {values['loss']} between steps {done - interval_steps} and {done}; stopped. "
                    f"Last good checkpoint: {good[-1] if good else 'none'} (lower learning_rate or beta, or use bf16)"
                )
            last_values = values
            if logger is not None:
                logger.log(done, values)
            accelerator.log(values, step=done)  # the report_to tracker (main process)
            progress.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values.get('implicit_accuracy', 0):.2f}",
                                 pairs_s=f"{values['pairs_per_s']:.1f}")
            interval_start, interval_steps = time.perf_counter(), 0
        if checkpoint_now or done == stop_at_step:
            if is_main:
                save_checkpoint(checkpoint_root, done, unwrapped, optimizer, lr_scheduler, accelerator.scaler, digest)
                prune_checkpoints(checkpoint_root, cfg.keep_checkpoints)
            accelerator.wait_for_everyone()
        if done == stop_at_step:
            progress.close()
            return {"stopped_at": done}
    progress.close()

    # Throughput without the first interval (start-up, cache warm-up), when there is more than one.
    steady = timed[1:] or timed
    pairs_per_s = sum(s for s, _ in steady) * pairs_per_step / max(sum(t for _, t in steady), 1e-9)
    summary = {
        "steps": cfg.max_train_steps,
        "pairs_per_step": pairs_per_step,
        "processes": world,
        "micro_batch_per_process": {"pairs": pair_micro_batch, "retain_images": retain_micro_batch},
        "mixed_precision": mixed_precision,
        "cuda_graph": use_graph,
        "fused_lora_layers": fused_lora_layers,
        "reference_cache": reference_pass.as_dict() if reference_pass is not None else None,
        "prediction_type": prediction_type,
        "pairs_per_s": pairs_per_s,
        "data": pairs.counts(),
        "pair_visits_per_epoch": len(pairs),
        "retain": ({"images": len(retain), "set_hash": retain.set_hash, "weight": cfg.retain.weight}
                   if retain is not None else None),
        "set_hash": pairs.set_hash,
        "final_metrics": last_values,
        "resumed_from": str(resume_from) if resume_from else None,
    }
    if is_main:
        _write_output(cfg, family, unwrapped, pairs, summary, work_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _write_output(cfg: TrainConfig, family: str, unet, pairs, summary: dict, work_dir: Path) -> None:
    """All or nothing: the output folder appears complete or not at all."""
    with atomic_directory(cfg.output_dir, overwrite=True) as tmp:
        save_lora(tmp, unet, family)
        write_marker(tmp, "lora")
        write_resolved_config(cfg, tmp)
        atomic_write_json(tmp / "training_summary.json", summary)
        metrics_file = work_dir / "logs" / "metrics.jsonl"
        if metrics_file.is_file():
            shutil.copyfile(metrics_file, tmp / "metrics.jsonl")
        atomic_write_text(tmp / "README.md", render_model_card(cfg, family, pairs.counts(), pairs.set_hash, summary))
        if cfg.export_merged_unet:
            export_merged_unet(cfg.model, tmp, tmp / "unet_merged", variant=cfg.variant)


def _check_tracker(report_to: str) -> None:
    """A tracker whose package is missing fails here, by name (accelerate would drop it without a word)."""
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(report_to)
    if package is None:
        return
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise ConfigError(f"train.report_to={report_to} needs the {package} package, which is not installed "
                          f"({exc}): pip install {package}, or set report_to: none") from exc


def _start_tracker(cfg: TrainConfig, accelerator, log_dir: Path) -> None:
    """accelerate's tracker for ``report_to``: tensorboard in ``log_dir/tensorboard``, wandb in ``log_dir/wandb``
    (offline unless the user set WANDB_MODE: nothing leaves the machine unasked). Given the resolved config."""
    if cfg.report_to == "none":
        return
    init_kwargs = {}
    if cfg.report_to == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        log_dir.mkdir(parents=True, exist_ok=True)
        init_kwargs = {"wandb": {"dir": str(log_dir), "name": Path(cfg.output_dir).parent.name or None}}
    project = "tensorboard" if cfg.report_to == "tensorboard" else "safe-diffusion-dpo"
    accelerator.init_trackers(project, config=_flat_config(to_dict(cfg)), init_kwargs=init_kwargs)


def _flat_config(tree: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested config as dotted keys with scalar values (what trackers store as hyper-parameters)."""
    import json

    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


def load_config(config_path: str | None, overrides: list[str]) -> TrainConfig:
    cfg = load_stage_config(TrainConfig, config_path, "train", overrides)
    return resolve_paths(cfg, config_name(config_path))


CLI = StageCLI(TrainConfig, "train", prog="python -m training.train", description=__doc__)


def build_parser():
    parser = CLI.parser()
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help="latest or a checkpoint folder (= resume=...)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = CLI.parse_args(argv, build_parser())
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])

    def work() -> None:
        cfg = load_config(args.config, overrides)
        summary = train(cfg)
        if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
            print(f"wrote {cfg.output_dir} ({summary['pairs_per_s']:.2f} pairs/s)")

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
