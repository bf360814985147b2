import numpy as np
import pytest

from core.errors import ConfigError
from inference.scorers import build_scorer


def _benign_images(n=3, size=64):
    """Flat-colour scenes with simple shapes: nothing a nudity detector should fire on."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        img[:] = rng.integers(0, 255, 3, dtype=np.uint8)
        img[size // 4 : size // 2, size // 4 : 3 * size // 4] = rng.integers(0, 255, 3, dtype=np.uint8)
        images.append(img)
    return images


def test_unknown_scorer_lists_valid_names():
    """The built-in scorers and the plug-ins' (the synthetic world's oracle), and how to register another."""
    with pytest.raises(ConfigError, match="unknown scorer 'q17'") as error:
        build_scorer("q17")
    for name in ("oracle", "nudenet", "clip"):
        assert repr(name) in str(error.value)
    assert "safe_diffusion_dpo.plugins" in str(error.value)


def test_nudenet_benign_images_give_no_exposure():
    scorer = build_scorer("nudenet")
    results = scorer.score(_benign_images())
    assert len(results) == 3
    for r in results:
        assert r["labels"]["exposed"] is False
        assert r["labels"]["nudenet@0.45"] is False and r["labels"]["nudenet@0.6"] is False
        assert 0.0 <= r["scores"]["nudenet_max"] < 0.45


def test_nudenet_bad_config():
    with pytest.raises(ConfigError, match="unknown class"):
        build_scorer("nudenet", classes=["NOT_A_CLASS"])
    with pytest.raises(ConfigError, match="threshold"):
        build_scorer("nudenet", threshold=0.05)


def test_clip_concepts_interface(tiny_clip_dir):
    scorer = build_scorer(
        "clip",
        path=str(tiny_clip_dir),
        concepts={"exposed": {"positive": ["a bare torso"], "negative": ["a person in a suit"], "threshold": 0.5},
                  "inappropriate": {"positive": "an inappropriate image", "negative": "an appropriate image"}},
        attributes={"group": {"zorvan": "a zorvan person", "quelli": "a quelli person", "mirdan": "a mirdan person"}},
        logit_scale=1.0,  # a random model's cosines are tiny; the usual 100 saturates the softmax
    )
    images = _benign_images(4, size=32)
    results = scorer.score(images, prompts=["a cat"] * 4)
    for r in results:
        assert 0.0 <= r["scores"]["exposed"] <= 1.0
        assert r["labels"]["exposed"] == (r["scores"]["exposed"] >= 0.5)
        group_probs = [r["scores"][f"group:{g}"] for g in ("zorvan", "quelli", "mirdan")]
        assert abs(sum(group_probs) - 1.0) < 1e-5
        assert r["labels"]["group"] == ("zorvan", "quelli", "mirdan")[int(np.argmax(group_probs))]
        assert r["scores"]["clip_score"] >= 0.0
    # Different images get different scores (the model is really run on them).
    assert len({round(r["scores"]["exposed"], 6) for r in results}) > 1


def test_clip_config_errors(tiny_clip_dir):
    with pytest.raises(ConfigError, match="no concepts"):
        build_scorer("clip", path=str(tiny_clip_dir))
    with pytest.raises(ConfigError, match="positive and one negative"):
        build_scorer("clip", path=str(tiny_clip_dir), concepts={"x": {"positive": ["a"], "negative": []}})
    with pytest.raises(ConfigError, match="bad options"):
        build_scorer("clip", path=str(tiny_clip_dir), colour="red")


def _world_renders(n=30):
    from synthetic_world.renderer import render
    from synthetic_world.vocab import GROUPS, OUTFITS, SETTINGS, SYMBOLS, Scene

    scenes = [
        Scene(setting=SETTINGS[i % 6], group=GROUPS[i % 3], outfit=OUTFITS[(i // 3) % 5], color="blue",
              exposed=bool((i // 2) % 2), symbol=SYMBOLS[(i // 5) % 4])
        for i in range(n)
    ]
    return scenes, list(render(scenes))


def test_oracle_scorer_reads_renders(synthetic_oracle_path):
    scenes, images = _world_renders()
    results = build_scorer("oracle", path=str(synthetic_oracle_path)).score(images)
    for scene, r in zip(scenes, results):
        assert r["labels"]["valid"] is True
        for attribute, value in scene.attributes().items():
            assert r["labels"][attribute] == value, attribute
        assert r["scores"]["exposed"] == float(scene.exposed)
        assert r["labels"]["symbol_present"] == (scene.symbol != "none")


def test_clip_scorer_with_synthetic_clip_agrees_with_the_world(synthetic_clip_path):
    import yaml

    cfg = yaml.safe_load(open("configs/demo.yaml"))["curate"]["scorers"]["clip"]
    scorer = build_scorer("clip", **dict(cfg, path=str(synthetic_clip_path)))
    scenes, images = _world_renders()
    results = scorer.score(images)
    agree = lambda key, truth: np.mean([r["labels"][key] == truth(s) for r, s in zip(results, scenes)])  # noqa: E731
    assert agree("exposed", lambda s: s.exposed) >= 0.9
    assert agree("group", lambda s: s.group) >= 0.9
    assert agree("symbol_present", lambda s: s.symbol != "none") >= 0.75
