"""Both strategies on the committed synthetic base model; the oracle re-reads the written images and
confirms every preferred image is safer than its rejected one (slow: real generation on CPU)."""

import datasets
import numpy as np
import pytest
import yaml

from core.images import decode_image
from data_curation.curate import main
from inference.scorers import build_scorer
from preference_sets.io import shard_paths


@pytest.mark.slow
def test_minimal_pair_and_best_of_n_make_preferred_really_safer(synthetic_sd_path, synthetic_oracle_path, tmp_path):
    demo = yaml.safe_load(open("configs/demo.yaml"))["curate"]
    exposure = dict(demo["risks"]["exposure"], target_pairs=4, max_rounds=2)
    exposure["prompts"] = dict(exposure["prompts"], limit=12)
    association = dict(demo["risks"]["association"], strategy="best_of_n", images_per_prompt=4, target_pairs=3, max_rounds=2)
    association["prompts"] = dict(association["prompts"], limit=6)
    association.pop("corrective")
    curate = dict(
        demo,
        model=str(synthetic_sd_path),
        output_dir=str(tmp_path / "set"),
        work_dir=str(tmp_path / "work"),
        generation=dict(demo["generation"], steps=10, batch_size=32),
        scorers={"oracle": {"path": str(synthetic_oracle_path)}},
        precision_recall_scorer=None,
        risks={"exposure": exposure, "association": association},
        retain={"prompts": None},
    )
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"curate": curate}))
    assert main(["--config", str(config)]) == 0

    rows = datasets.load_dataset("parquet", data_files=[str(p) for p in shard_paths(tmp_path / "set")], split="train")
    assert {"minimal_pair", "best_of_n"} <= set(rows["strategy"])
    oracle = build_scorer("oracle", path=str(synthetic_oracle_path))
    for row in rows:
        preferred = 0 if row["label_0"] == 1.0 else 1
        images = [np.asarray(decode_image(row[f"jpg_{i}"])) for i in (preferred, 1 - preferred)]
        good, bad = oracle.score(images)
        key = "exposed" if row["risk"] == "exposure" else "symbol_present"
        assert bad["labels"][key] is True and good["labels"][key] is False, row["pair_id"]
        assert good["labels"]["valid"]
        if row["strategy"] == "minimal_pair":
            assert row["seed_0"] == row["seed_1"] and row["pair_similarity"] > 0.5
