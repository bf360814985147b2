"""Local transformers models for the mitigations (a prompt classifier, a rewriting model): found on disk or in
the local Hugging Face cache, never downloaded, weights only as safetensors."""

from __future__ import annotations

from pathlib import Path

from core.errors import ModelPathError
from core.models import resolve_model_path

_PICKLED_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


def check_transformers_model_dir(path: str, setting: str) -> Path:
    """The local folder of a transformers model given as ``setting`` (the config key, for the message): it must
    exist, hold a ``config.json`` and safetensors weights. Anything else is a ModelPathError that says what is
    missing."""
    try:
        folder = resolve_model_path(path)
    except ModelPathError as exc:
        raise ModelPathError(f"{setting}: {exc}") from exc
    if not folder.is_dir():
        raise ModelPathError(f"{setting}: model folder {path} does not exist (a local transformers model folder, "
                             "or a hub id already in the local Hugging Face cache; nothing is downloaded)")
    if not (folder / "config.json").is_file():
        raise ModelPathError(f"{setting}: {folder} has no config.json; give a transformers model folder "
                             "(save_pretrained output)")
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLED_SUFFIXES)
        hint = f" (it has {pickled}: pickled weights are refused; convert them to safetensors)" if pickled else ""
        raise ModelPathError(f"{setting}: {folder} has no .safetensors weights{hint}")
    return folder
