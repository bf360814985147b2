"""``python -m tests.training.launch_with_kernels CONFIG KERNELS_JSON``: ``training.train`` on CONFIG's ``train:``
section with ``KernelOptions(**KERNELS_JSON)``, which no YAML key sets (training/kernels.py); the entry point of
the multi-process tests that need one (``accelerate launch ... -m tests.training.launch_with_kernels``)."""

from __future__ import annotations

import json
import sys

from training.kernels import KernelOptions
from training.train import load_config, train

if __name__ == "__main__":
    config, kernels = sys.argv[1], json.loads(sys.argv[2])
    train(load_config(config, []), kernels=KernelOptions(**kernels))
