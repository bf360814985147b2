"""Image moderation (mitigations.moderation): flag rules over scorer outputs, config checks."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import config_from_dict
from core.errors import ConfigError, DataError
from mitigations.moderation import FlagRule, ImageModerator, ModerationConfig

IMAGES = [np.full((8, 8, 3), value, dtype=np.uint8) for value in (0, 100, 200)]


class BrightnessScorer:
    """Score: mean brightness in [0, 1]; labels: "bright" (bool) and "tone" (a string, "none" when dark)."""

    name = "bright"

    def __init__(self):
        self.calls = []

    def score(self, images, prompts=None):
        self.calls.append(len(images))
        out = []
        for image in images:
            level = float(image.mean()) / 255
            out.append({"scores": {"level": level},
                        "labels": {"bright": level > 0.5, "tone": "none" if level < 0.2 else "light"}})
        return out


def moderator(flags, batch_size=32):
    config = ModerationConfig(scorers={"clip": {}}, flags=[FlagRule(**f) for f in flags], batch_size=batch_size)
    scorer = BrightnessScorer()
    return ImageModerator(config, scorers={"clip": scorer}), scorer


def test_score_threshold_and_label_rules():
    mod, _ = moderator([{"name": "mid", "scorer": "clip", "score": "level", "threshold": 0.3},
                        {"name": "bright", "scorer": "clip", "label": "bright"},
                        {"name": "toned", "scorer": "clip", "label": "tone"}])
    verdicts = mod.moderate(IMAGES)
    assert [v.flags for v in verdicts] == [(), ("mid", "toned"), ("mid", "bright", "toned")]
    assert [v.flagged for v in verdicts] == [False, True, True]
    assert verdicts[2].outputs["clip"]["labels"]["tone"] == "light"


def test_images_are_scored_in_batches():
    mod, scorer = moderator([{"name": "b", "scorer": "clip", "label": "bright"}], batch_size=2)
    mod.moderate(IMAGES)
    assert scorer.calls == [2, 1]


def test_a_rule_on_a_key_the_scorer_does_not_give_is_a_data_error():
    mod, _ = moderator([{"name": "x", "scorer": "clip", "score": "nudity"}])
    with pytest.raises(DataError, match=r"scorer 'clip' gives no score 'nudity'; its scores: \['level'\]"):
        mod.moderate(IMAGES)


@pytest.mark.parametrize("section, problem", [
    ({"flags": [{"name": "x", "scorer": "oracle", "label": "y"}]}, "moderate.scorers is empty"),
    ({"scorers": {"orcale": {}}, "flags": []}, "orcale"),
    ({"scorers": {"nudenet": {}}, "flags": []}, "moderate.flags is empty"),
    ({"scorers": {"nudenet": {}}, "flags": [{"name": "x", "scorer": "clip", "score": "s"}]}, "'clip' is not under"),
    ({"scorers": {"nudenet": {}}, "flags": [{"name": "x", "scorer": "nudenet"}]}, "exactly one of score"),
    ({"scorers": {"nudenet": {}}, "flags": [{"name": "x", "scorer": "nudenet", "score": "s", "label": "l"}]},
     "exactly one of score"),
    ({"scorers": {"nudenet": {}}, "flags": [{"name": "x", "scorer": "nudenet", "label": "a"},
                                            {"name": "x", "scorer": "nudenet", "label": "b"}]}, "names repeat"),
])
def test_bad_config_is_a_config_error(section, problem):
    with pytest.raises(ConfigError, match=problem):
        config_from_dict(ModerationConfig, section, where="moderate")
