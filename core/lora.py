"""A peft LoRA adapter on a diffusers UNet, its adapter-off view, and saving it in diffusers' LoRA format.

Shared by every stage that trains a LoRA (Diffusion-DPO in ``training/``, concept erasure in ``erasure/``), so
that each writes the one file stock diffusers loads, ``pipe.load_lora_weights(folder)``.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import Iterator, Sequence

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from core.errors import ConfigError
from core.models import LORA_WEIGHT_NAME

ADAPTER_NAME = "default"


def add_lora_adapter(unet, *, rank: int, alpha: float, target_modules: Sequence[str] | str, dropout: float = 0.0,
                     use_dora: bool = False, setting: str = "lora.target_modules") -> list[torch.nn.Parameter]:
    """Freeze the UNet, add one LoRA adapter; return its (float32) trainable parameters.

    ``target_modules``: module names peft matches by suffix (``to_q``), full module names, or one regular
    expression matched against whole names. B is zero-initialised (peft's "gaussian" init: A ~ N(0, 1/r)), so at
    step 0 the adapted UNet equals the frozen one. ``setting`` names the config key in the error when no module
    matches.
    """
    unet.requires_grad_(False)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        init_lora_weights="gaussian",
        target_modules=targets,
        use_dora=use_dora,
    )
    try:
        unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        shown = targets if isinstance(targets, str) or len(targets) <= 8 else f"{targets[:8]} ... ({len(targets)})"
        raise ConfigError(f"{setting} {shown}: {exc}") from exc
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        # Frozen weights may be bf16/fp16; the trained LoRA weights and their optimiser state stay fp32.
        p.data = p.data.float()
    return params


def lora_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """peft's LoRA layers (``BaseTunerLayer``) of ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


# unet -> its LoRA layers, found once: the adapter switch runs twice per training step.
_LAYERS_OF: "weakref.WeakKeyDictionary[torch.nn.Module, list[torch.nn.Module]]" = weakref.WeakKeyDictionary()


def _cached_lora_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    layers = _LAYERS_OF.get(unet)
    if layers is None:
        layers = _LAYERS_OF[unet] = lora_layers(unet)
    return layers


@contextlib.contextmanager
def adapters_disabled(unet) -> Iterator[None]:
    """The frozen model: the same UNet with its LoRA switched off (no second copy in memory).

    ``unet`` must be the unwrapped model (``accelerator.unwrap_model``), not a DDP wrapper. This is
    what diffusers' ``unet.disable_adapters()`` / ``enable_adapters()`` do (peft's
    ``enable_adapters(False/True)`` on every LoRA layer, which also flips the LoRA weights'
    ``requires_grad`` off and back on), minus their walk over all modules on every call: that walk
    cost ~18 ms per step on the synthetic demo (GPU profile, docs/performance.md), more than its UNet.
    The layer list is found once per UNet (LoRA is added before training starts).
    """
    layers = _cached_lora_layers(unet)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def lora_parameters(model) -> dict[str, torch.Tensor]:
    """The adapter's weights of a UNet or text encoder with peft's key names (no adapter name), for checkpoints."""
    return get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)


# peft's file names (``PeftModel.save_pretrained`` writes them, ``PeftModel.from_pretrained`` reads them).
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
# The prefix of a ``PeftModel``'s state-dict keys: the wrapper's ``base_model`` (LoraModel), then its ``model``.
PEFT_KEY_PREFIX = "base_model.model."


def save_lora(folder: str | Path, unet, family: str, text_encoder=None) -> Path:
    """Write the LoRA in the two formats people load LoRAs with; return the diffusers file.

    * ``pytorch_lora_weights.safetensors`` for stock ``pipe.load_lora_weights(folder)``. The adapter config
      (rank, alpha, targets, DoRA) goes into the safetensors metadata, so diffusers restores alpha/rank
      exactly instead of assuming alpha = rank.
    * ``adapter_config.json`` + ``adapter_model.safetensors`` for ``peft.PeftModel.from_pretrained(unet,
      folder)``: peft reads its own key names and config file, not diffusers'. The weights are the same
      tensors (a few MB twice); diffusers picks its own file by name when both are present.
    * ``text_encoder``: a text encoder carrying a LoRA adapter named ``ADAPTER_NAME`` (the trainer's
      ``TextEncoderLora.encoder``, or one stock ``load_lora_weights`` adapted), its layers written into
      the diffusers file under ``text_encoder.`` (stock ``load_lora_weights`` loads both parts) and, in peft's
      format, as ``text_encoder/adapter_config.json`` + ``adapter_model.safetensors``.
    """
    peft_layers = {k: v.detach().float().cpu().contiguous() for k, v in lora_parameters(unet).items()}
    layers = convert_state_dict_to_diffusers(peft_layers)
    # diffusers' conversion renames only attention projections (to_q.lora_A -> to_q.lora.down, ...); other layers
    # (feed-forward, resnet convolutions) keep peft's lora_A / lora_B. Its loader decides the format of the whole
    # file from the first key, so a mixed file loses one kind of layer without an error. Such a LoRA is written
    # in peft's key format throughout, which the loader reads as is.
    if any(".lora_A." in k or ".lora_B." in k for k in layers):
        layers = peft_layers
    config = unet.peft_config[ADAPTER_NAME]
    pipeline_cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    text = {}
    if text_encoder is not None:
        text_config = text_encoder.peft_config[ADAPTER_NAME]
        text_layers = {k: v.detach().float().cpu().contiguous() for k, v in lora_parameters(text_encoder).items()}
        text = {"text_encoder_lora_layers": convert_state_dict_to_diffusers(text_layers),
                "text_encoder_lora_adapter_metadata": text_config.to_dict()}
    pipeline_cls.save_lora_weights(
        save_directory=str(folder),
        unet_lora_layers=layers,
        safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict(),
        **text,
    )
    config.save_pretrained(str(folder))
    save_file({PEFT_KEY_PREFIX + k: v for k, v in peft_layers.items()}, str(Path(folder) / PEFT_WEIGHT_NAME),
              metadata={"format": "pt"})
    if text_encoder is not None:
        (Path(folder) / "text_encoder").mkdir(exist_ok=True)
        text_config.save_pretrained(str(Path(folder) / "text_encoder"))
        save_file({PEFT_KEY_PREFIX + k: v for k, v in text_layers.items()},
                  str(Path(folder) / "text_encoder" / PEFT_WEIGHT_NAME), metadata={"format": "pt"})
    return Path(folder) / LORA_WEIGHT_NAME
