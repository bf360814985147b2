"""What every entry point shares: the exit status of expected bad input, and the device setting.

An entry point's ``main`` puts its work in a function and returns ``run_main(work)``: a
:class:`core.errors.PipelineError` (bad config, missing model, bad data, leakage) is printed as
``error: <message>`` on stderr with exit status 2 and no traceback; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from typing import Callable

from core.errors import ConfigError, PipelineError


def run_main(work: Callable[[], int | None]) -> int:
    """``work()``'s exit status (0 when it returns None), or 2 after printing a PipelineError's message."""
    try:
        status = work()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if status is None else status


def resolve_device(setting: str, key: str = "device") -> str:
    """A ``device`` setting as a torch device name: "auto" is "cuda" when a GPU is visible, else "cpu"; any
    other name is kept, and a CUDA device when none is visible is a ConfigError naming the config ``key``."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}={setting} but no CUDA device is visible")
    return setting
