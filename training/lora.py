"""LoRA on the UNet via peft, the adapter-off reference, and saving in diffusers' LoRA format."""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import Iterator

import torch

from core.errors import ConfigError
from core.models import LORA_WEIGHT_NAME, lora_weights_file
from training.config import LoraSettings

ADAPTER_NAME = "default"


def add_lora(unet, settings: LoraSettings) -> list[torch.nn.Parameter]:
    """Freeze the UNet, add one LoRA adapter; return its (float32) trainable parameters.

    B is zero-initialised (peft's "gaussian" init: A ~ N(0, 1/r)), so at step 0 policy == reference and
    the DPO loss is exactly log 2.
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        init_lora_weights="gaussian",
        target_modules=list(settings.target_modules),
        use_dora=settings.use_dora,
    )
    try:
        unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"train.lora.target_modules {settings.target_modules}: {exc}") from exc
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        # Frozen weights may be bf16/fp16; the trained LoRA weights and their optimiser state stay fp32.
        p.data = p.data.float()
    return params


def lora_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """peft's LoRA layers (``BaseTunerLayer``) of ``module``, in module order."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


# unet -> its LoRA layers, found once: the adapter switch runs twice per micro-step.
_LAYERS_OF: "weakref.WeakKeyDictionary[torch.nn.Module, list[torch.nn.Module]]" = weakref.WeakKeyDictionary()


def _cached_lora_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    layers = _LAYERS_OF.get(unet)
    if layers is None:
        layers = _LAYERS_OF[unet] = lora_layers(unet)
    return layers


@contextlib.contextmanager
def adapters_disabled(unet) -> Iterator[None]:
    """The reference model: the same UNet with its LoRA switched off (no second copy in memory).

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


def lora_parameters(unet) -> dict[str, torch.Tensor]:
    """The adapter's weights with peft's key names (no adapter name), for checkpoints."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)


def load_lora_parameters(unet, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ConfigError(f"checkpoint LoRA does not match this model/LoRA config: unexpected keys {unexpected[:5]}")


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A LoRA written by :func:`save_lora` (or any diffusers/kohya-free SD LoRA in diffusers' format):
    (UNet layers with peft key names, the adapter config from the metadata, {} if absent). Safetensors
    only; a missing file is a ModelPathError, an unreadable one a ConfigError, each naming it."""
    import json

    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors import SafetensorError, safe_open

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


def init_lora_from(unet, lora: tuple[dict[str, torch.Tensor], dict], settings: LoraSettings, path: str | Path) -> None:
    """Start training from an existing LoRA (e.g. the previous round of iterative DPO): ``lora`` as
    :func:`read_lora_file` returns it for ``path`` is loaded into the freshly added adapter, whose rank,
    alpha and targets must match it. The reference of the DPO loss stays the base model (adapter off)."""
    state, config = lora
    for key, ours in (("r", settings.rank), ("lora_alpha", settings.alpha)):
        if key in config and float(config[key]) != float(ours):
            raise ConfigError(f"train.init_lora {path}: its {key} is {config[key]}, train.lora asks for {ours}; "
                              "set train.lora to match the LoRA you start from")
    own = set(lora_parameters(unet))
    missing = sorted(own - set(state))
    if missing:
        raise ConfigError(f"train.init_lora {path} lacks {len(missing)} of the adapter's layers, e.g. {missing[:3]} "
                          "(train.lora.target_modules must match the LoRA you start from)")
    load_lora_parameters(unet, state)


# peft's file names (``PeftModel.save_pretrained`` writes them, ``PeftModel.from_pretrained`` reads them).
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
# The prefix of a ``PeftModel``'s state-dict keys: the wrapper's ``base_model`` (LoraModel), then its ``model``.
_PEFT_KEY_PREFIX = "base_model.model."


def save_lora(folder: str | Path, unet, family: str) -> Path:
    """Write the LoRA in the two formats people load LoRAs with; return the diffusers file.

    * ``pytorch_lora_weights.safetensors`` for stock ``pipe.load_lora_weights(folder)``. The adapter config
      (rank, alpha, targets, DoRA) goes into the safetensors metadata, so diffusers restores alpha/rank
      exactly instead of assuming alpha = rank.
    * ``adapter_config.json`` + ``adapter_model.safetensors`` for ``peft.PeftModel.from_pretrained(unet,
      folder)``: peft reads its own key names and config file, not diffusers'. The weights are the same
      tensors (a few MB twice); diffusers picks its own file by name when both are present.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import save_file

    peft_layers = {k: v.detach().float().cpu().contiguous() for k, v in lora_parameters(unet).items()}
    layers = convert_state_dict_to_diffusers(peft_layers)
    config = unet.peft_config[ADAPTER_NAME]
    pipeline_cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline_cls.save_lora_weights(
        save_directory=str(folder),
        unet_lora_layers=layers,
        safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict(),
    )
    config.save_pretrained(str(folder))
    save_file({_PEFT_KEY_PREFIX + k: v for k, v in peft_layers.items()}, str(Path(folder) / PEFT_WEIGHT_NAME),
              metadata={"format": "pt"})
    return Path(folder) / LORA_WEIGHT_NAME


def export_merged_unet(model_path: str | Path, lora_folder: str | Path, target: str | Path,
                       variant: str | None = None) -> None:
    """A full UNet with the LoRA fused in (stock diffusers load -> fuse -> unload -> save)."""
    from core.models import load_pipeline

    pipe = load_pipeline(model_path, dtype=torch.float32, variant=variant)
    pipe.load_lora_weights(str(lora_folder))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.unet.save_pretrained(str(target), safe_serialization=True)
