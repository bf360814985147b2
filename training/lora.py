"""LoRA on the UNet via peft, the adapter-off reference, and saving in diffusers' LoRA format.

The adapter itself, its adapter-off switch and the saving live in core/lora.py (concept erasure trains the same
kind of LoRA); this module adds the trainer's side: its config, checkpoints' loading and starting from a LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.utils import convert_unet_state_dict_to_peft
from peft.utils import set_peft_model_state_dict
from safetensors import SafetensorError, safe_open

from core.errors import ConfigError
from core.lora import (  # noqa: F401  (re-exported: the trainer's modules and tests import them from here)
    ADAPTER_NAME,
    PEFT_CONFIG_NAME,
    PEFT_KEY_PREFIX,
    PEFT_WEIGHT_NAME,
    adapters_disabled,
    add_lora_adapter,
    lora_layers,
    lora_parameters,
    save_lora,
)
from core.models import LORA_WEIGHT_NAME, load_pipeline, lora_weights_file
from training.config import LoraSettings


def add_lora(unet, settings: LoraSettings) -> list[torch.nn.Parameter]:
    """Freeze the UNet, add one LoRA adapter (``train.lora``); return its (float32) trainable parameters.

    B is zero-initialised (core.lora.add_lora_adapter), so at step 0 policy == reference and the DPO loss is
    exactly log 2.
    """
    return add_lora_adapter(unet, rank=settings.rank, alpha=settings.alpha, target_modules=settings.target_modules,
                            dropout=settings.dropout, use_dora=settings.use_dora,
                            setting="train.lora.target_modules")


def load_lora_parameters(unet, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ConfigError(f"checkpoint LoRA does not match this model/LoRA config: unexpected keys {unexpected[:5]}")


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A LoRA written by :func:`save_lora` (or any diffusers/kohya-free SD LoRA in diffusers' format):
    (UNet layers with peft key names, the adapter config from the metadata, {} if absent). Safetensors
    only; a missing file is a ModelPathError, an unreadable one a ConfigError, each naming it."""
    path = lora_weights_file(path, "give a LoRA folder written by `make train`")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            layers = {k[len("unet."):]: handle.get_tensor(k) for k in handle.keys() if k.startswith("unet.")}
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"LoRA file {path} is not a readable safetensors file: {exc}") from exc
    if not layers:
        raise ConfigError(f"LoRA file {path} holds no UNet LoRA layers (keys starting with 'unet.')")
    # diffusers writes the adapter config with the component's prefix ("unet.r", "unet.lora_alpha", ...).
    config = json.loads(metadata.get("lora_adapter_metadata", "{}") or "{}")
    config = {k[len("unet."):]: v for k, v in config.items() if k.startswith("unet.")} or config
    return convert_unet_state_dict_to_peft(layers), config


def read_text_encoder_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The text encoder's LoRA of a LoRA folder that :func:`save_lora` wrote with one (``text_encoder/``: peft's
    weights and adapter config): (weights with peft key names, the adapter config), or None when the LoRA has
    none. ``path``: the folder or its diffusers file, as ``train.init_lora`` takes it. A diffusers file with
    ``text_encoder.`` layers but no peft folder beside it is a ConfigError: its text half cannot be continued."""
    path = Path(path)
    weights_file = lora_weights_file(path, "give a LoRA folder written by `make train`")
    folder = weights_file.parent / "text_encoder"
    weights, config_file = folder / PEFT_WEIGHT_NAME, folder / PEFT_CONFIG_NAME
    if weights_file.name != LORA_WEIGHT_NAME or not weights.is_file():
        try:
            with safe_open(str(weights_file), "pt") as handle:
                has_text = any(k.startswith("text_encoder.") for k in handle.keys())
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"LoRA file {weights_file} is not a readable safetensors file: {exc}") from exc
        if has_text:
            raise ConfigError(f"LoRA file {weights_file} holds text encoder layers, but not the peft copy that "
                              f"`make train` writes beside it ({folder}/{PEFT_WEIGHT_NAME} and "
                              f"{PEFT_CONFIG_NAME}); give the whole LoRA folder")
        return None
    if not config_file.is_file():
        raise ConfigError(f"text encoder LoRA {folder} has no {PEFT_CONFIG_NAME} (its rank, alpha and modules)")
    try:
        with safe_open(str(weights), "pt") as handle:
            state = {k[len(PEFT_KEY_PREFIX):] if k.startswith(PEFT_KEY_PREFIX) else k: handle.get_tensor(k)
                     for k in handle.keys()}
        config = json.loads(config_file.read_text())
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"text encoder LoRA {folder} is not readable: {exc}") from exc
    return state, config


def check_lora_settings(config: dict, settings: LoraSettings, path: str | Path, what: str = "") -> None:
    """The rank and alpha of a saved adapter ``config`` against the run's ``train.lora``."""
    for key, ours in (("r", settings.rank), ("lora_alpha", settings.alpha)):
        if key in config and float(config[key]) != float(ours):
            raise ConfigError(f"train.init_lora {path}: its {what}{key} is {config[key]}, train.lora asks for "
                              f"{ours}; set train.lora to match the LoRA you start from")


def init_lora_from(unet, lora: tuple[dict[str, torch.Tensor], dict], settings: LoraSettings, path: str | Path) -> None:
    """Start training from an existing LoRA (e.g. the previous round of iterative DPO): ``lora`` as
    :func:`read_lora_file` returns it for ``path`` is loaded into the freshly added adapter, whose rank,
    alpha and targets must match it. The reference of the DPO loss stays the base model (adapter off)."""
    state, config = lora
    check_lora_settings(config, settings, path)
    own = set(lora_parameters(unet))
    missing = sorted(own - set(state))
    if missing:
        raise ConfigError(f"train.init_lora {path} lacks {len(missing)} of the adapter's layers, e.g. {missing[:3]} "
                          "(train.lora.target_modules must match the LoRA you start from)")
    load_lora_parameters(unet, state)


def export_merged_unet(model_path: str | Path, lora_folder: str | Path, target: str | Path,
                       variant: str | None = None) -> None:
    """A full UNet with the LoRA fused in (stock diffusers load -> fuse -> unload -> save)."""
    pipe = load_pipeline(model_path, dtype=torch.float32, variant=variant)
    pipe.load_lora_weights(str(lora_folder))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.unet.save_pretrained(str(target), safe_serialization=True)
