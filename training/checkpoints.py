"""Checkpoints in safetensors + JSON only (accelerate's ``save_state`` pickles the optimiser and RNG
states, and this project never unpickles files). A checkpoint folder holds:

* ``lora.safetensors``       the adapter weights (peft key names);
* ``optimizer.safetensors``  every AdamW state tensor, keyed ``<param index>.<name>``;
* ``state.json``             step, optimiser param-group hyper-parameters, LR-scheduler and loss-scaler
                             state, the config digest.

The data order, noise and timesteps of a step are pure functions of (seed, step) (see training/step.py),
so (weights, optimiser, scheduler, step) is the complete training state: resume is exact.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core.config import to_dict
from core.errors import ConfigError
from core.io import atomic_directory, atomic_write_json, stable_key
from training.lora import lora_parameters, load_lora_parameters

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TEXT_ENCODER_LORA_FILE = "text_encoder_lora.safetensors"  # the trained text encoder's LoRA (peft key names)
logger = logging.getLogger(__name__)


# Fields that do not change what is trained; a checkpoint may be resumed under different values.
# compile_unet / cuda_graph / fused_lora change kernels or how they are launched (rounding at most), not the
# objective; leaving them out also keeps the digest of checkpoints written before they existed, and lets a run resume
# graphed from an eager checkpoint and back. (compile_regions predates this and stays in.) reference_cache moves the
# reference pass before the loop; the reference losses are the same numbers (training/reference_cache.py).
# compile_cache_dir holds compiled kernels only; latent_cache_dtype changes the cached latents by bf16 rounding.
_BOOKKEEPING = {"resume", "log_every", "checkpoint_every", "keep_checkpoints", "report_to", "progress_bar",
                "export_merged_unet", "output_dir", "work_dir", "compile_unet", "cuda_graph", "fused_lora",
                "reference_cache", "reference_cache_dir", "overwrite", "compile_cache_dir", "latent_cache_dtype"}


# Objective fields added after checkpoints were first written: at their default they stay out of the digest,
# so those checkpoints still resume (a non-default value does change what is trained and is included).
# (Three objective fields removed later, TrainConfig.REMOVED_KEYS, were listed here too: at their defaults they
# were left out of the digest, so the digests of configs that never set them are unchanged.)
_LATER_DEFAULTS = {"init_lora": None, "pairs_per_step": None, "rpo_alpha": 0.0, "rpo_alpha_per_risk": {},
                   "rpo_rejected_share": 0.0, "rpo_rejected_share_per_risk": {}, "variant": None}
_LATER_RETAIN_DEFAULTS = {"images_per_step": None}
_LATER_LORA_DEFAULTS = {"text_encoder_modules": [], "text_encoder_risks": []}

# Kernel choices that were TrainConfig fields and are now training/kernels.py's KernelOptions, at the values every
# config had that never set them. The digest keeps them as these constants, so the digests of checkpoints written
# while they were fields are unchanged; whatever a run's KernelOptions say does not enter it (rounding at most, like
# compile_unet). (compile_backend was bookkeeping and never in the digest.)
_MOVED_TO_KERNEL_OPTIONS = {"allow_tf32": True, "compile_options": {}}


def config_digest(cfg) -> str:
    """The digest of the training-relevant fields of ``cfg`` (a TrainConfig) that every checkpoint stores:
    resuming under a config with another digest is refused (:func:`load_checkpoint`)."""
    fields = {k: v for k, v in to_dict(cfg).items() if k not in _BOOKKEEPING}
    for key, default in _LATER_DEFAULTS.items():
        if fields.get(key) == default:
            del fields[key]
    retain = fields.get("retain", {})
    for key, default in _LATER_RETAIN_DEFAULTS.items():
        if retain.get(key, default) == default:
            retain.pop(key, None)
    lora = fields.get("lora", {})
    for key, default in _LATER_LORA_DEFAULTS.items():
        if lora.get(key, default) == default:
            lora.pop(key, None)
    fields.update(_MOVED_TO_KERNEL_OPTIONS)
    return stable_key(fields)


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"checkpoint-{step:07d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (a half-written one is a hidden temp folder, never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def _optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"{index}.{name}"] = value.detach().cpu().contiguous() if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def save_checkpoint(root: str | Path, step: int, unet, optimizer, lr_scheduler, scaler, config_digest: str,
                    text_encoder=None) -> Path:
    """Write ``checkpoint-<step>`` atomically (all or nothing). Call on the main process only. ``text_encoder``: the
    trained text encoder's LoRA (training/text_lora.py), if any."""
    target = checkpoint_dir(root, step)
    with atomic_directory(target, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in lora_parameters(unet).items()}, str(tmp / "lora.safetensors"))
        if text_encoder is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in text_encoder.lora_state().items()},
                      str(tmp / TEXT_ENCODER_LORA_FILE))
        tensors, groups = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(
            tmp / "state.json",
            {
                "step": step,
                "config_digest": config_digest,
                "optimizer": groups,
                "lr_scheduler": lr_scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
            },
        )
    return target


def prune_checkpoints(root: str | Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_resume(resume: str | None, root: str | Path) -> Path | None:
    """``None`` -> start fresh; ``"latest"`` -> newest checkpoint, or start fresh with a warning in the log
    when there is none (a first run and its restarts share one command line); else that folder, which must
    be a checkpoint: a named checkpoint that is missing is an error, never a silent fresh start."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(root)
        if not found and int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per process
            logger.warning("warning: resume=latest: no checkpoint found in %s; starting from step 0", root)
        return found[-1] if found else None
    folder = Path(resume)
    if not (folder / "state.json").is_file():
        available = [p.name for p in list_checkpoints(root)]
        raise ConfigError(f"resume: {folder} is not a checkpoint folder (no state.json); checkpoints in {root}: "
                          f"{available or 'none'} (or resume=latest for the newest)")
    return folder


def load_checkpoint(folder: str | Path, unet, optimizer, lr_scheduler, scaler, config_digest: str,
                    text_encoder=None) -> int:
    """Restore everything saved by :func:`save_checkpoint` into live objects; return the step."""
    folder = Path(folder)
    state = json.loads((folder / "state.json").read_text())
    if state["config_digest"] != config_digest:
        raise ConfigError(
            f"checkpoint {folder} was written with a different training config (model, data, LoRA or "
            "optimisation settings changed); start a fresh run or resume with the original config"
        )
    load_lora_parameters(unet, load_file(str(folder / "lora.safetensors")))
    if text_encoder is not None:
        if not (folder / TEXT_ENCODER_LORA_FILE).is_file():
            raise ConfigError(f"checkpoint {folder} holds no text-encoder LoRA ({TEXT_ENCODER_LORA_FILE}), which "
                              "train.lora.text_encoder_modules asks for")
        text_encoder.load_lora_state(load_file(str(folder / TEXT_ENCODER_LORA_FILE)))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["optimizer"]["param_groups"]})
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    return int(state["step"])
