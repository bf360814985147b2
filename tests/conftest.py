"""Shared pytest fixtures: tiny random SD1.5/SDXL pipelines and the committed synthetic model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "2")))

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_SD = REPO / "models" / "synthetic-sd"
SYNTHETIC_CLIP = REPO / "models" / "synthetic-clip"
SYNTHETIC_ORACLE = REPO / "models" / "synthetic-oracle"


@pytest.fixture(scope="session")
def tiny_sd15_path(tmp_path_factory) -> Path:
    from core.tiny_models import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("tiny") / "sd15")


@pytest.fixture(scope="session")
def tiny_sdxl_path(tmp_path_factory) -> Path:
    from core.tiny_models import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny") / "sdxl")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A random-weight open_clip model folder (``<name>.json`` + ``<name>.safetensors``)."""
    from core.tiny_models import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def _require(path: Path) -> Path:
    if not (path.exists() and any(path.iterdir())):
        pytest.fail(f"committed model asset {path} is missing; run `make base`")
    return path


@pytest.fixture(scope="session")
def synthetic_sd_path() -> Path:
    return _require(SYNTHETIC_SD)


@pytest.fixture(scope="session")
def synthetic_clip_path() -> Path:
    return _require(SYNTHETIC_CLIP)


@pytest.fixture(scope="session")
def synthetic_oracle_path() -> Path:
    return _require(SYNTHETIC_ORACLE)


def make_random_lora(model_path, folder, family="sd", text_encoder_modules=()):
    """A LoRA with non-zero A and B (so aligned images differ from base), saved by the trainer's own code; with
    ``text_encoder_modules`` also a text encoder half on those modules (as train.lora.text_encoder_modules)."""
    import torch

    from core.models import load_pipeline
    from training.config import LoraSettings
    from training.lora import add_lora, save_lora
    from training.text_lora import TextEncoderLora

    pipe = load_pipeline(model_path)
    params = add_lora(pipe.unet, LoraSettings(rank=2, alpha=2.0))
    text = None
    if text_encoder_modules:
        text = TextEncoderLora(pipe.text_encoder, rank=2, alpha=2.0, target_modules=list(text_encoder_modules))
        params += text.trainable_parameters()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.5)
    save_lora(folder, pipe.unet, family, text.encoder if text else None)
    return folder


@pytest.fixture(scope="session")
def random_lora(tiny_sd15_path, tmp_path_factory):
    return make_random_lora(tiny_sd15_path, tmp_path_factory.mktemp("lora") / "lora")
