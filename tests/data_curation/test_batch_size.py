"""batch_size: auto (the generation: section of curate and eval), resolved per device and resolution."""

from __future__ import annotations

import pytest

from core.config import config_from_dict
from core.errors import ConfigError
from inference.config import GenerationConfig
from inference.generation import resolve_batch_size


def test_auto_batch_size_by_device_and_resolution():
    assert resolve_batch_size(12, 512, "cuda") == 12  # a number is kept
    assert resolve_batch_size("auto", 64, "cuda") == 256  # the synthetic model: launch-bound on a GPU
    assert resolve_batch_size("auto", 64, "cpu") == 32
    assert resolve_batch_size("auto", 512, "cuda") == 16  # SD1.5: the plain-pipeline benchmark batch
    assert resolve_batch_size("auto", 1024, "cuda") == 4  # SDXL
    assert resolve_batch_size("auto", 2048, "cuda") == 1
    assert resolve_batch_size("auto", 1024, "cpu") == 4


def test_batch_size_config_accepts_auto_or_a_positive_number():
    assert config_from_dict(GenerationConfig, {"batch_size": "auto"}).batch_size == "auto"
    with pytest.raises(ConfigError, match="batch_size"):
        config_from_dict(GenerationConfig, {"batch_size": "big"})
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        config_from_dict(GenerationConfig, {"batch_size": 0})


def test_eval_batch_size_accepts_auto():
    from evals.config import EvalConfig

    required = {"mode": "synthetic", "model": "m", "clip_path": "c"}
    cfg = config_from_dict(EvalConfig, {**required, "generation": {"batch_size": "auto"}})
    assert cfg.generation.batch_size == "auto"
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        config_from_dict(EvalConfig, {**required, "generation": {"batch_size": -1}})
