"""Locating and loading diffusers checkpoints from local folders or the local Hugging Face cache (never
from the network).

Works for any SD1.x/2.x or SDXL diffusers folder, in the layouts checkpoints ship in: plain weights
(``unet/diffusion_pytorch_model.safetensors``), a weights variant (``unet/diffusion_pytorch_model.fp16.safetensors``,
``text_encoder/model.fp16.safetensors``; load it with ``variant="fp16"``), sharded weights, or a hub id
(``org/name``) already in the local Hugging Face cache. The synthetic world's model is just another such
folder; nothing here knows it is synthetic.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from huggingface_hub import constants, snapshot_download

from core.errors import ModelPathError
from core.io import sha256_file, stable_key

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
# Weight files that unpickle when loaded (arbitrary code can run): recognised so the error can name them.
_PICKLED_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# "-00001-of-00002": the shard number diffusers and transformers put into sharded weight file names.
_SHARD = re.compile(r"-\d+-of-\d+$")
# A hub id as the hub spells them: "org/name" (a path that exists locally always wins over this reading).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_VARIANT = re.compile(r"^\w+$")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache this process reads (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/...)."""
    return Path(constants.HF_HUB_CACHE)


def resolve_model_path(model: str | Path) -> Path:
    """The local folder of ``model``: the path itself when it exists, else, for a hub id ``org/name``, its
    snapshot in the local Hugging Face cache (found offline; nothing is downloaded). A path that neither
    exists nor reads as a hub id comes back unchanged, for :func:`check_model_dir` to report."""
    path = Path(model)
    if path.exists() or not _REPO_ID.match(str(model)):
        return path

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(str(model), local_files_only=True, cache_dir=str(cache)))
    except (OSError, ValueError) as exc:  # LocalEntryNotFoundError is an OSError, a bad repo id a ValueError
        raise ModelPathError(
            f"model {model!r} does not exist as a local folder, and as a hub id it is not in the local Hugging Face "
            f"cache {cache} (no models--{str(model).replace('/', '--')}/ snapshot there). Give a local diffusers "
            f"folder, or download it where there is network (`hf download {model}`) and copy that cache here "
            "(HF_HUB_CACHE names where it is read)"
        ) from exc


def model_fingerprint(path: str | Path, variant: str | None = None, *,
                      subfolders: tuple[str, ...] | None = None) -> str:
    """Content fingerprint of a model folder (or of one weights file; a hub id is read from the local Hugging Face
    cache): a key over every file's path (relative to the folder) and bytes, and the weights ``variant``.

    ``subfolders``: only the files under those subfolders count (those present): a training cache depends only on
    some components (the latent cache on the VAE and text encoders, the reference losses on the UNet and
    scheduler). Without it every file of the folder counts: the ``model_id`` / ``adapter_id`` of image keys.
    Hidden files never count. Keys built on it change whenever the weights change (a fine-tuned copy at the same
    path gets new keys) and stay the same when the folder is moved. Reading a real SD checkpoint takes seconds.
    A folder holding plain and fp16 weights makes different images from each, so the variant is part of the key.
    """
    path = resolve_model_path(path)
    if path.is_file():
        root, files = path.parent, [path]
    else:
        root = path
        folders = [path] if subfolders is None else [path / sub for sub in subfolders if (path / sub).is_dir()]
        files = sorted(p for folder in folders for p in folder.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return stable_key("model-fingerprint", variant, [(p.relative_to(root).as_posix(), sha256_file(p)) for p in files])


def model_family(path: str | Path) -> str:
    """'sd' or 'sdxl' for a local diffusers folder, judged from model_index.json."""
    index = read_model_index(path)
    name = index.get("_class_name", "")
    if "XL" in name or "text_encoder_2" in index:
        return "sdxl"
    return "sd"


def read_model_index(path: str | Path) -> dict:
    path = resolve_model_path(path)
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


def weight_variant(file_name: str) -> str | None:
    """The variant a ``.safetensors`` weight file belongs to: ``model.fp16.safetensors`` -> "fp16",
    ``diffusion_pytorch_model.fp16-00001-of-00002.safetensors`` -> "fp16", the plain name -> None."""
    stem = _SHARD.sub("", file_name.removesuffix(".safetensors"))
    return stem.split(".", 1)[1] if "." in stem else None


def check_model_dir(path: str | Path, variant: str | None = None) -> str:
    """Check a diffusers folder (or cached hub id) is complete for loading ``variant`` (None: the plain
    weight files); return its family. Raise naming what is missing and what to set.

    Only safetensors weights count: pickled ``.bin`` files are never loaded, and are refused by name.
    As diffusers does, a component without ``variant`` files falls back to its plain files.
    """
    if variant is not None and not _VARIANT.match(str(variant)):
        raise ModelPathError(f"variant {variant!r} is not a weights variant name (e.g. fp16, as in "
                             "unet/diffusion_pytorch_model.fp16.safetensors)")
    path = resolve_model_path(path)
    family = model_family(path)
    missing, pickled, found = [], [], {}  # found: weight component -> variants of its safetensors files
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
        names = sorted(p.name for p in folder.iterdir())
        found[comp] = {weight_variant(n) for n in names if n.endswith(".safetensors")}
        if not found[comp]:
            unsafe = [n for n in names if n.endswith(_PICKLED_SUFFIXES)]
            pickled += [f"{comp}/{n}" for n in unsafe]
            if not unsafe:
                missing.append(f"{comp}/*.safetensors")
    if pickled:
        raise ModelPathError(
            f"model folder {path}: pickled weights (.bin) are refused; convert to safetensors (found only "
            f"{', '.join(pickled)} for their components; loading a pickle can run arbitrary code). On a trusted "
            "machine: load the folder with diffusers and save_pretrained(folder, safe_serialization=True)"
        )
    if missing:
        raise ModelPathError(f"model folder {path} is incomplete: missing {', '.join(missing)}")
    _check_variant(path, variant, found)
    return family


def _check_variant(path: Path, variant: str | None, found: dict[str, set]) -> None:
    """Every weight component must have ``variant`` files or plain ones (diffusers' fallback), and a named
    variant must exist somewhere (diffusers refuses a variant no component has)."""
    others = sorted({v for variants in found.values() for v in variants if v is not None})
    lacking = [comp for comp, variants in found.items() if variant not in variants and None not in variants]
    if variant is None and lacking:
        only = sorted({v for comp in lacking for v in found[comp]})
        setting = f"variant={only[0]}" if len(only) == 1 else f"variant to one of {only}"
        raise ModelPathError(
            f"model folder {path}: the folder holds {'/'.join(only)}-variant weights only "
            f"(no plain weights in {', '.join(c + '/' for c in lacking)}); set {setting}"
        )
    if variant is not None and not any(variant in variants for variants in found.values()):
        hint = f"set variant to one of {others}" if others else "leave variant unset (the folder has plain weights only)"
        raise ModelPathError(f"model folder {path} has no {variant}-variant weights (no *.{variant}.safetensors "
                             f"in {', '.join(c + '/' for c in found)}); {hint}")
    if lacking:
        listed = ", ".join(f"{c}/ (only {'/'.join(sorted(found[c]))})" for c in lacking)
        raise ModelPathError(f"model folder {path}: no {variant}-variant or plain weights in {listed}")


def load_pipeline(path: str | Path, dtype=None, device: str | None = None, variant: str | None = None):
    """Load an SD or SDXL pipeline from a local folder or a cached hub id with stock diffusers (safetensors
    only, offline); ``variant`` picks the weight files (e.g. "fp16"), None the plain ones."""
    path = resolve_model_path(path)
    family = check_model_dir(path, variant)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kwargs = dict(torch_dtype=dtype or torch.float32, use_safetensors=True, local_files_only=True)
    if variant is not None:
        kwargs["variant"] = variant
    if family == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(str(path), **kwargs)
    except OSError as exc:  # the files the check saw are there, so one of them is unreadable (truncated, corrupt)
        raise ModelPathError(f"model folder {path} could not be loaded: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    if device:
        pipe.to(device)
    return pipe
