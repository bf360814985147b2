"""The curation log line for a generation summary: no "at None images/s" when nothing was generated."""

from __future__ import annotations

from data_curation.workspace import describe_generation


def test_nothing_generated_says_where_the_images_came_from():
    summary = {"images_generated": 0, "images_reused": 12, "images_per_second": None}
    line = describe_generation(summary)
    assert line == "generated no images (all 12 found in the store)"
    assert "None" not in describe_generation({"images_generated": 0, "images_reused": 0, "images_per_second": None})


def test_generated_images_give_the_rate():
    summary = {"images_generated": 8, "images_reused": 4, "images_per_second": 9.5}
    assert describe_generation(summary) == "generated 8 images at 9.5 images/s (4 found in the store)"
    assert describe_generation(summary | {"images_reused": 0}) == "generated 8 images at 9.5 images/s"
