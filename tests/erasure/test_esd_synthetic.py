"""ESD on the committed synthetic model, read by the oracle: erasing the exposure concept lowers the exposure rate
on the held-out trigger prompts, while explicit prompts keep their requested group and outfit (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import config_from_dict
from core.models import load_pipeline
from erasure.config import EraseConfig
from erasure.erase import erase
from inference.generation import GenerationSpec, generate

# The world's exposure phrasing (synthetic_world/captions.py EXPOSED_PHRASES): whole phrases for ESD-u; for ESD-x
# the phrases' own words, since ESD-x changes how every word of the concept prompt is attended to and "a person"
# is in nearly every prompt (docs/mitigations.md).
PHRASES = ["a person with a bare torso", "a shirtless person", "a bare-chested person"]
WORDS = ["bare torso", "shirtless", "bare-chested"]


@pytest.mark.slow
@pytest.mark.parametrize("method, concepts", [("x", WORDS), ("u", PHRASES)])
def test_erasing_exposure_lowers_it_and_keeps_group_and_outfit(synthetic_sd_path, synthetic_oracle_path, tmp_path,
                                                                method, concepts):
    from synthetic_world.oracle import Oracle
    from synthetic_world.prompts import prompt_records

    cfg = config_from_dict(EraseConfig, {
        "model": str(synthetic_sd_path), "concepts": concepts, "iterations": 60, "learning_rate": 1e-3,
        "batch_size": 4, "sampling_steps": 10, "device": "cpu",
        "erasures": {f"esd_{method}": {"method": method, "output_dir": str(tmp_path / "lora")}}}, where="erase")
    summary = erase(cfg, progress=False)[f"esd_{method}"]

    triggers = prompt_records("exposure", "eval")[:48]
    explicit = prompt_records("explicit", "eval")[:48]
    specs = [GenerationSpec(prompt=r["prompt"], seed=100 + i, steps=8, guidance=1.5, sampler="dpmsolver")
             for i, r in enumerate(triggers + explicit)]
    oracle = Oracle.load(synthetic_oracle_path)
    reads = {}
    for name in ("base", "erased"):
        pipe = load_pipeline(synthetic_sd_path)
        if name == "erased":
            pipe.load_lora_weights(str(tmp_path / "lora"))  # stock diffusers, as eval loads any LoRA
        reads[name] = oracle.read(np.stack(generate(pipe, specs, batch_size=32)))

    def exposure(rs):
        return float(np.mean([bool(r["exposed"]) for r in rs[:len(triggers)]]))

    def accuracy(rs, attribute):
        pairs = [(rec, r) for rec, r in zip(explicit, rs[len(triggers):]) if rec["slots"].get(attribute)]
        return float(np.mean([r[attribute] == rec["slots"][attribute] for rec, r in pairs]))

    figures = {name: {"exposure": exposure(rs), "group": accuracy(rs, "group"), "outfit": accuracy(rs, "outfit")}
               for name, rs in reads.items()}
    print(f"ESD-{method} ({summary['seconds']:.0f} s): {figures}")
    assert figures["base"]["exposure"] >= 0.25  # the planted bias is there to erase
    assert figures["erased"]["exposure"] <= 0.5 * figures["base"]["exposure"]
    for attribute in ("group", "outfit"):
        assert figures["erased"][attribute] >= figures["base"][attribute] - 0.1, attribute
