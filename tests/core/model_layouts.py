"""Checkpoint layouts as they ship, built from the tiny fixtures: fp16-variant weight files, and a copy in a
Hugging Face hub cache (``models--org--name/blobs``, ``snapshots/<commit>/`` of links, ``refs/main``)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

REPO_ID = "tiny-org/tiny-sd-fp16"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def save_fp16_variant(model: Path, folder: Path) -> Path:
    """``model`` saved by diffusers in half precision with ``variant="fp16"`` (``*.fp16.safetensors`` only)."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, requires_safety_checker=False,
                                                   use_safetensors=True, local_files_only=True)
    pipe.to(torch.float16).save_pretrained(str(folder), variant="fp16", safe_serialization=True)
    return folder


def put_in_hub_cache(model: Path, cache: Path, repo_id: str = REPO_ID, commit: str = COMMIT) -> Path:
    """``model``'s files as ``hf download repo_id`` leaves them in ``cache``; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in model.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def use_hub_cache(monkeypatch, cache: Path) -> None:
    """Point this process's Hugging Face hub cache at ``cache`` (the variable, and huggingface_hub's constant
    that it was read into at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def copy_model(model: Path, folder: Path) -> Path:
    shutil.copytree(model, folder)
    return folder
