"""A LoRA on the text encoder, trained next to the UNet's (``train.lora.text_encoder_modules``; SD1.x/2.x).

Why it exists: a UNet LoRA changes how the UNet answers the text states it is given. A benign prompt in a trigger
context ("at the beach") and an explicit request ("with a bare torso at the beach") give nearby states, and most
of what the risk pairs teach lands on what every prompt shares, so the LoRA learns "never draw it" and requests fade
with the risk. A LoRA on the encoder can move the states of one phrasing and leave the other's, and the base UNet
already draws each state as it did: the risk is removed where the prompt did not ask for it (docs/experiments.md,
demo recipe 26).

The reference of the DPO loss and of the retain anchor stays the base model: its text states are the cached
embeddings (training/cache.py), computed by the frozen encoder. Only the policy forward encodes the captions' token
ids through this module, so the encoder's LoRA gets gradients from the pairs and from the anchor alike.
"""

from __future__ import annotations

from typing import Sequence

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from core.errors import ConfigError
from core.lora import ADAPTER_NAME


class TextEncoderLora(torch.nn.Module):
    """The text encoder with one peft LoRA adapter: token ids (B, L) -> cross-attention states (B, L, D), float32,
    the encoder's last hidden state as SD1.x/2.x pipelines feed it to the UNet."""

    def __init__(self, encoder: torch.nn.Module, *, rank: int, alpha: float, target_modules: Sequence[str]) -> None:
        super().__init__()
        encoder.requires_grad_(False)
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules))
        try:
            self.encoder = inject_adapter_in_model(config, encoder, adapter_name=ADAPTER_NAME)
        except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
            raise ConfigError(f"train.lora.text_encoder_modules {list(target_modules)}: {exc}") from exc
        # peft's state-dict helpers read the adapter config from here (what PeftModel / add_adapter would set).
        self.encoder.peft_config = {ADAPTER_NAME: config}
        for p in self.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # frozen weights may be bf16; the trained LoRA and its optimiser state: fp32

    @property
    def peft_config(self) -> LoraConfig:
        return self.encoder.peft_config[ADAPTER_NAME]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids)[0].float()

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The adapter's weights with peft's key names (no adapter name), for checkpoints and saving."""
        return get_peft_model_state_dict(self.encoder, adapter_name=ADAPTER_NAME)

    def load_lora_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.lora_state()) - set(state))
        if missing:
            raise ConfigError(f"the text encoder's LoRA does not match this config: it lacks {len(missing)} of the "
                              f"adapter's weights, e.g. {missing[:3]}")
        result = set_peft_model_state_dict(self.encoder, state, adapter_name=ADAPTER_NAME)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ConfigError(f"the text encoder's LoRA does not match this config: unexpected keys {unexpected[:5]}")
