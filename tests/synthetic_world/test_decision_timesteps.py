"""synthetic_world/decision_timesteps.py: the pure parts (the probe itself runs the model: see its docstring)."""

from __future__ import annotations

import numpy as np

from core.images import encode_png
from synthetic_world.decision_timesteps import preferred_and_rejected, survival


def test_survival_fractions():
    assert survival(["a", "b", "c", "a"], ["a", "a", "c", "b"], ["b", "b", "a", "c"]) == (0.5, 0.25)


def test_preferred_follows_the_label():
    red, blue = (np.full((4, 4, 3), v, dtype=np.uint8) for v in (200, 20))
    rows = [{"jpg_0": encode_png(red), "jpg_1": encode_png(blue), "label_0": 1},
            {"jpg_0": encode_png(red), "jpg_1": encode_png(blue), "label_0": 0}]
    preferred, rejected = preferred_and_rejected(rows)
    assert [np.asarray(p)[0, 0, 0] for p in preferred] == [200, 20]
    assert [np.asarray(r)[0, 0, 0] for r in rejected] == [20, 200]
