"""core.cli: the exit status every entry point gives expected bad input, and the device setting."""

from __future__ import annotations

import pytest

from core.cli import resolve_device, run_main
from core.errors import ConfigError, DataError


def test_run_main_status_and_pipeline_errors(capsys):
    assert run_main(lambda: None) == 0
    assert run_main(lambda: 3) == 3

    def bad_input():
        raise DataError("the set at x has no rows")

    assert run_main(bad_input) == 2
    assert capsys.readouterr().err == "error: the set at x has no rows\n"

    def bug():
        raise KeyError("not an expected error")

    with pytest.raises(KeyError):  # anything else keeps its traceback
        run_main(bug)


def test_resolve_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"eval.device=cuda:1 but no CUDA device is visible"):
        resolve_device("cuda:1", "eval.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
