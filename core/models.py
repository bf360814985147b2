"""Locating and loading diffusers checkpoints from local folders (never from a hub).

Works for any local SD1.x/2.x or SDXL diffusers folder. The synthetic world's model is just
another such folder; nothing here knows it is synthetic.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import ModelPathError

# The LoRA weights file a training run writes (the name stock ``load_lora_weights(folder)`` looks for).
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_weights_file(path: str | Path, hint: str) -> Path:
    """The LoRA weights file of a folder written by `make train`, or ``path`` itself if it is the
    ``.safetensors`` file; ModelPathError naming the file and ``hint`` (what to give) otherwise."""
    file = Path(path)
    if file.is_dir():
        file = file / LORA_WEIGHT_NAME
    if file.suffix != ".safetensors" or not file.is_file():
        raise ModelPathError(f"LoRA file not found: {file} ({hint})")
    return file


# Components each family needs, as written in model_index.json by diffusers.
REQUIRED_COMPONENTS = {
    "sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
_WEIGHT_SUFFIXES = (".safetensors",)


def model_family(path: str | Path) -> str:
    """'sd' or 'sdxl' for a local diffusers folder, judged from model_index.json."""
    index = read_model_index(path)
    name = index.get("_class_name", "")
    if "XL" in name or "text_encoder_2" in index:
        return "sdxl"
    return "sd"


def read_model_index(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ModelPathError(f"model path {path} does not exist (give a local diffusers folder)")
    if not path.is_dir():
        raise ModelPathError(f"model path {path} is not a folder (give a local diffusers folder)")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelPathError(f"model folder {path} is incomplete: model_index.json is missing")
    try:
        return json.loads(index_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelPathError(f"{index_file} is not valid JSON: {exc}") from exc


def check_model_dir(path: str | Path) -> str:
    """Check a local diffusers folder is complete; return its family. Raise naming what is missing.

    Only safetensors weights count: pickled ``.bin`` files are never loaded.
    """
    path = Path(path)
    family = model_family(path)
    missing = []
    for comp in REQUIRED_COMPONENTS[family]:
        folder = path / comp
        if not folder.is_dir():
            missing.append(f"{comp}/")
            continue
        if comp.startswith("tokenizer") or comp == "scheduler":
            if not any(folder.iterdir()):
                missing.append(f"{comp}/ (empty)")
            continue
        if not (folder / "config.json").is_file():
            missing.append(f"{comp}/config.json")
        if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in folder.iterdir()):
            missing.append(f"{comp}/*.safetensors")
    if missing:
        raise ModelPathError(f"model folder {path} is incomplete: missing {', '.join(missing)}")
    return family


def load_pipeline(path: str | Path, dtype=None, device: str | None = None):
    """Load a local SD or SDXL pipeline with stock diffusers (safetensors only, offline)."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    family = check_model_dir(path)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kwargs = dict(torch_dtype=dtype or torch.float32, use_safetensors=True, local_files_only=True)
    if family == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(str(path), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    if device:
        pipe.to(device)
    return pipe
