"""benchmarks/lora_layer.py runs end to end (on a CPU here, tiny shapes: a smoke run; its figures are GPU ones)."""

from __future__ import annotations

import json


def test_lora_layer_smoke_run_times_every_variant(tmp_path):
    from benchmarks.lora_layer import VARIANTS, main

    out = tmp_path / "lora_layer.json"
    main(["--arch", "tiny", "--rank", "4", "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in results] == VARIANTS
    for record in results:
        assert record["ms_fwd_bwd"] > 0 and record["gpu_kernel_ms"] > 0 and record["top_kernels_ms"]
