"""Curation mechanics end to end on the tiny random SD1.5 and SDXL fixtures (no meaning, just plumbing).

The detector thresholds accept every image as both risky and safe, so pairs are always formed and
every code path (rounds, correctives, scoring cache, writing the set) runs in seconds.
"""

import json
from pathlib import Path

import datasets
import pytest
import yaml

from data_curation.curate import main
from preference_sets.io import shard_paths


def write_config(tmp_path, model, **extra_curate):
    tmp_path.mkdir(parents=True, exist_ok=True)
    curate = {
        "model": str(model),
        "output_dir": str(tmp_path / "set"),
        "work_dir": str(tmp_path / "work"),
        "generation": {"steps": 2, "batch_size": 4},
        "scorers": {"nudenet": {}},
        # Threshold 0 makes every image risky, so the cross-risk check would refuse every preferred
        # image; it is tested on exact fakes in test_strategies.py.
        "cross_risk_check": False,
        "risks": {
            "exposure": {
                "prompts": {
                    "source": "templates",
                    "templates": ["a photo of a {animal} at the {place}"],
                    "slots": {"animal": ["cat", "dog"], "place": ["beach", "park"]},
                },
                "strategy": "minimal_pair",
                "target_pairs": 3,
                "images_per_prompt": 1,
                "detector": {"scorer": "nudenet", "key": "nudenet_max", "threshold": 0.0, "safe_below": 1.0},
                "corrective": [{"negative_prompt": "nude"}],
            },
            "association": {
                "prompts": {"source": "templates", "templates": ["a {animal} in the park"], "slots": {"animal": ["cat", "dog"]}},
                "strategy": "best_of_n",
                "target_pairs": 2,
                "images_per_prompt": 2,
                "detector": {"scorer": "nudenet", "key": "nudenet_max", "threshold": 0.0, "safe_below": 1.0},
            },
        },
    }
    curate.update(extra_curate)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"curate": curate}))
    return path


@pytest.mark.parametrize("fixture", ["tiny_sd15_path", "tiny_sdxl_path"])
def test_curation_mechanics(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    config = write_config(tmp_path, model)
    assert main(["--config", str(config)]) == 0
    rows = datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(tmp_path / "set")], split="train")
    assert len(rows) == 5
    assert sorted(rows["risk"]) == ["association"] * 2 + ["exposure"] * 3
    for row in rows:
        assert row["label_0"] + row["label_1"] == 1.0
        rejected = 1 if row["label_0"] == 1.0 else 0
        # The training caption is the original prompt: what generated the rejected image.
        assert row["caption"] == row[f"prompt_{rejected}"]
        if row["strategy"] == "minimal_pair":
            # Same seed (same noise), the preferred image from the corrective negative prompt.
            assert row["seed_0"] == row["seed_1"]
            preferred = 0 if row["label_0"] == 1.0 else 1
            assert row[f"negative_prompt_{preferred}"] == "nude" and row[f"negative_prompt_{1 - preferred}"] == ""
            assert 0.0 <= row["pair_similarity"] <= 1.0
        else:
            assert row["seed_0"] != row["seed_1"]
        json.loads(row["scores_0"])["nudenet"]["scores"]["nudenet_max"]
    assert (tmp_path / "set" / "resolved_config.yaml").is_file()
    card = (tmp_path / "set" / "README.md").read_text()
    assert "exposure" in card and "association" in card
    report = json.loads((tmp_path / "set" / "curation_report.json").read_text())
    assert report["per_risk"]["exposure"]["pairs_kept"] == 3
    assert report["generation"]["images_generated"] > 0


def test_rerun_reuses_everything_and_gives_same_pairs(tiny_sd15_path, tmp_path):
    config = write_config(tmp_path, tiny_sd15_path)
    assert main(["--config", str(config)]) == 0
    first = datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(tmp_path / "set")], split="train")
    assert main(["--config", str(config)]) == 0
    report = json.loads((tmp_path / "set" / "curation_report.json").read_text())
    assert report["generation"]["images_generated"] == 0 and report["generation"]["images_reused"] > 0
    second = datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(tmp_path / "set")], split="train")
    assert first["pair_id"] == second["pair_id"] and first["jpg_0"] == second["jpg_0"]


def test_crash_mid_generation_then_restart_gives_identical_pairs(tiny_sd15_path, tmp_path, monkeypatch):
    """In-process stand-in for a kill (the real SIGKILL test is in the slow tier)."""
    from inference.generation import ImageStore

    reference = write_config(tmp_path / "ref", tiny_sd15_path)
    assert main(["--config", str(reference)]) == 0
    crashed = write_config(tmp_path / "crash", tiny_sd15_path)
    original_put, puts = ImageStore.put, []

    def dying_put(self, key, image):
        if len(puts) == 5:
            raise KeyboardInterrupt("simulated kill")
        puts.append(key)
        original_put(self, key, image)

    monkeypatch.setattr(ImageStore, "put", dying_put)
    with pytest.raises(KeyboardInterrupt):
        main(["--config", str(crashed)])
    monkeypatch.setattr(ImageStore, "put", original_put)
    assert not (tmp_path / "crash" / "set").exists()
    assert main(["--config", str(crashed)]) == 0
    load = lambda f: datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(f)], split="train")  # noqa: E731
    ref, got = load(tmp_path / "ref" / "set"), load(tmp_path / "crash" / "set")
    assert ref["pair_id"] == got["pair_id"] and ref["jpg_0"] == got["jpg_0"] and ref["jpg_1"] == got["jpg_1"]


def test_retain_set_written_beside_the_pairs(tiny_sd15_path, tmp_path):
    retain = {"prompts": {"source": "templates", "templates": ["a {thing} on a table"],
                          "slots": {"thing": ["cup", "book", "lamp"]}},
              "images_per_prompt": 2, "output_dir": str(tmp_path / "retain"), "drop_risky": False}
    config = write_config(tmp_path, tiny_sd15_path, retain=retain)
    assert main(["--config", str(config)]) == 0
    rows = datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(tmp_path / "retain")], split="train")
    assert len(rows) == 6
    assert sorted(set(rows["caption"])) == ["a book on a table", "a cup on a table", "a lamp on a table"]
    assert len(set(rows["seed"])) == 6  # a fresh seed per image
    meta = json.loads((tmp_path / "retain" / "retain.json").read_text())
    assert meta["images"] == 6 and meta["images_kept"] == 6
    report = json.loads((tmp_path / "set" / "curation_report.json").read_text())
    assert report["retain_set"]["images_generated"] == 6


def test_retain_set_refuses_when_every_image_is_flagged(tiny_sd15_path, tmp_path, capsys):
    # The tiny detectors flag every image (threshold 0), so drop_risky leaves nothing to anchor on.
    retain = {"prompts": {"source": "templates", "templates": ["a {thing}"], "slots": {"thing": ["cup"]}},
              "output_dir": str(tmp_path / "retain")}
    config = write_config(tmp_path, tiny_sd15_path, retain=retain)
    assert main(["--config", str(config)]) == 2
    assert "every retain image was dropped" in capsys.readouterr().err
    assert not (tmp_path / "retain").exists()


def test_retain_folder_follows_the_preference_set(tmp_path):
    """A run that writes its preference set elsewhere must not overwrite runs/<config>/retain_set."""
    from data_curation.config import CurateConfig, RetainConfig
    from data_curation.curate import retain_folder

    assert retain_folder(CurateConfig(model="m"), "configs/demo.yaml") == Path("runs/demo/retain_set")
    moved = CurateConfig(model="m", output_dir=str(tmp_path / "sweep" / "preference_set"))
    assert retain_folder(moved, "configs/demo.yaml") == tmp_path / "sweep" / "retain_set"
    explicit = CurateConfig(model="m", output_dir=str(tmp_path / "a"),
                            retain=RetainConfig(output_dir=str(tmp_path / "r")))
    assert retain_folder(explicit, "configs/demo.yaml") == tmp_path / "r"


def test_curate_with_a_lora_generates_with_it(tiny_sd15_path, tmp_path):
    """curate.lora (on-policy pairs for iterative DPO): stock load_lora_weights, other image keys than
    the base model's, the LoRA recorded as the model id; a missing LoRA is a clear error before any work."""
    import torch

    from core.models import load_pipeline
    from training.config import LoraSettings
    from training.lora import add_lora, save_lora

    pipe = load_pipeline(tiny_sd15_path, dtype=torch.float32)
    add_lora(pipe.unet, LoraSettings(rank=4, alpha=4.0))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    save_lora(tmp_path / "lora", pipe.unet, "sd")

    base = write_config(tmp_path / "base", tiny_sd15_path)
    assert main(["--config", str(base)]) == 0
    with_lora = write_config(tmp_path / "aligned", tiny_sd15_path, lora=str(tmp_path / "lora"))
    assert main(["--config", str(with_lora)]) == 0
    load = lambda f: datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(f)], split="train")  # noqa: E731
    a, b = load(tmp_path / "base" / "set"), load(tmp_path / "aligned" / "set")
    assert set(b["model_id"]) == {f"{tiny_sd15_path}+{tmp_path / 'lora'}"}
    assert a["jpg_0"][0] != b["jpg_0"][0]  # the same prompt and seed, another model
    images = lambda f: {p.name for p in (f / "work" / "images").rglob("*.png")}  # noqa: E731
    assert not images(tmp_path / "base") & images(tmp_path / "aligned")

    missing = write_config(tmp_path / "missing", tiny_sd15_path, lora=str(tmp_path / "nope"))
    assert main(["--config", str(missing)]) == 2
    assert not (tmp_path / "missing" / "set").exists()


def test_fast_paths_with_a_lora_make_the_same_images(tiny_sd15_path, random_lora, tmp_path):
    """curate.generation.fast_paths (fused QKV, channels_last, compiled UNet and VAE decoder) with a LoRA: the
    adapter is merged into the weights first, so every image equals the plain LoRA pipeline's to rounding
    (same keys, at most 1 grey level), the pairs are the same and the report names the fast paths."""
    import numpy as np

    from core.images import decode_image

    lora = str(random_lora)
    plain = write_config(tmp_path / "plain", tiny_sd15_path, lora=lora)
    fast_generation = {"steps": 2, "batch_size": 4, "fast_paths": True, "speedups": {"compile_backend": "aot_eager"}}
    fast = write_config(tmp_path / "fast", tiny_sd15_path, lora=lora, generation=fast_generation)
    assert main(["--config", str(plain)]) == 0 and main(["--config", str(fast)]) == 0

    stored = lambda f: {p.name: p for p in (f / "work" / "images").rglob("*.png")}  # noqa: E731
    plain_images, fast_images = stored(tmp_path / "plain"), stored(tmp_path / "fast")
    assert plain_images.keys() == fast_images.keys() and plain_images
    for name, path in plain_images.items():
        a = np.asarray(decode_image(path.read_bytes(), what=name), dtype=int)
        b = np.asarray(decode_image(fast_images[name].read_bytes(), what=name), dtype=int)
        assert np.abs(a - b).max() <= 1, name
    load = lambda f: datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(f)], split="train")  # noqa: E731
    assert load(tmp_path / "plain" / "set")["pair_id"] == load(tmp_path / "fast" / "set")["pair_id"]
    report = lambda f: json.loads((f / "set" / "curation_report.json").read_text())  # noqa: E731
    assert report(tmp_path / "plain")["fast_paths"] == []  # auto on a CPU: off
    assert report(tmp_path / "fast")["fast_paths"] == ["fuse_qkv", "channels_last", "compile_unet", "compile_vae"]


def test_check_only_risk_curates_nothing(tiny_sd15_path, tmp_path):
    """target_pairs: 0 keeps a risk's detector for the cross-risk check and curates none of its pairs."""
    config = write_config(tmp_path, tiny_sd15_path)
    data = yaml.safe_load(config.read_text())
    data["curate"]["risks"]["association"]["target_pairs"] = 0
    config.write_text(yaml.safe_dump(data))
    assert main(["--config", str(config)]) == 0
    rows = datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(tmp_path / "set")], split="train")
    assert set(rows["risk"]) == {"exposure"}
    report = json.loads((tmp_path / "set" / "curation_report.json").read_text())
    assert report["per_risk"]["association"] == {"target_pairs": 0, "pairs_kept": 0, "check_only": True}


def test_stopping_early_writes_the_same_pairs_from_fewer_images(tiny_sd15_path, tmp_path, monkeypatch):
    """Generation and scoring batches of 2, so curation works 2 specs at a time: stopping once the first
    target_pairs pairs are certain writes exactly the set, image bytes and scores included, of finishing the
    round in one call per list (block size unlimited), and generates fewer images."""
    import functools

    import data_curation.curate as curate
    import data_curation.strategies as strategies
    from data_curation.workspace import Workspace

    monkeypatch.setattr(curate, "Workspace", functools.partial(Workspace, score_batch_size=2))
    real_block_size = strategies._block_size
    sets = {}
    for name, stop_early in (("lazy", True), ("whole", False)):
        monkeypatch.setattr(curate, "curate_risk", functools.partial(strategies.curate_risk, stop_early=stop_early))
        monkeypatch.setattr(strategies, "_block_size", real_block_size if stop_early else lambda ws: 10**9)
        config = write_config(tmp_path / name, tiny_sd15_path, generation={"steps": 2, "batch_size": 2})
        data = yaml.safe_load(config.read_text())
        data["curate"]["risks"]["exposure"]["target_pairs"] = 1  # 4 prompts, each gives a pair
        data["curate"]["risks"]["association"]["target_pairs"] = 1  # 2 prompts of 2 seeds, each gives one
        config.write_text(yaml.safe_dump(data))
        assert main(["--config", str(config)]) == 0
        rows = datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(tmp_path / name / "set")], split="train")
        report = json.loads((tmp_path / name / "set" / "curation_report.json").read_text())
        sets[name] = (rows.to_list(), report)
    (lazy, lazy_report), (whole, whole_report) = sets["lazy"], sets["whole"]
    assert len(lazy) == 2 and lazy == whole
    assert lazy_report["generation"]["images_generated"] == 2 + 2 + 2  # exposure: 2 originals + 2 fixes; association: 1 prompt
    assert whole_report["generation"]["images_generated"] == 4 + 4 + 4
    assert lazy_report["per_risk"]["exposure"]["original_images"] == 2
    assert whole_report["per_risk"]["exposure"]["pairs_found"] == 4
