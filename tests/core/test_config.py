from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional, Union

import pytest

from core.config import Renamed, config_from_dict, load_stage_config, read_yaml, write_resolved_config
from core.errors import ConfigError


@dataclass
class Inner:
    rank: int = 4
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k"])


@dataclass
class Outer:
    lr: float = 1e-4
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    maybe: Optional[int] = None
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        if self.lr <= 0:
            raise ValueError("lr must be positive")


def test_defaults_and_overrides():
    cfg = config_from_dict(Outer, {"lr": 3}, ["inner.rank=8", "name=hello", "inner.targets=[a,b,c]", "maybe=5"])
    assert cfg.lr == 3.0 and isinstance(cfg.lr, float)
    assert cfg.inner.rank == 8 and cfg.inner.targets == ["a", "b", "c"]
    assert cfg.name == "hello" and cfg.maybe == 5


def test_scientific_notation_override():
    assert config_from_dict(Outer, {}, ["lr=2e-5"]).lr == pytest.approx(2e-5)


def test_unknown_key_names_key_and_lists_valid():
    with pytest.raises(ConfigError) as err:
        config_from_dict(Outer, {"lrr": 1.0})
    assert "lrr" in str(err.value) and "lr" in str(err.value) and "inner" in str(err.value)


def test_unknown_nested_key():
    with pytest.raises(ConfigError, match="rnak"):
        config_from_dict(Outer, {"inner": {"rnak": 2}})


def test_wrong_types_and_values():
    with pytest.raises(ConfigError):
        config_from_dict(Outer, {"inner": {"rank": "big"}})
    with pytest.raises(ConfigError):
        config_from_dict(Outer, {"mode": "c"})
    with pytest.raises(ConfigError, match="positive"):
        config_from_dict(Outer, {"lr": -1})
    with pytest.raises(ConfigError):
        config_from_dict(Outer, {"inner": {"rank": True}})


def test_stage_sections(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("train:\n  lr: 0.5\ncurate: {}\n")
    assert load_stage_config(Outer, path, "train").lr == 0.5
    # Overrides may carry the section's prefix (as the README writes them) or not.
    assert load_stage_config(Outer, path, "train", ["train.lr=0.2"]).lr == 0.2
    assert load_stage_config(Outer, path, "train", ["lr=0.3"]).lr == 0.3
    with pytest.raises(ConfigError, match="eval"):  # another section's prefix is not stripped
        load_stage_config(Outer, path, "train", ["eval.lr=0.2"])
    path.write_text("trian:\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match="trian"):
        load_stage_config(Outer, path, "train")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)


def test_resolved_config_written(tmp_path):
    cfg = config_from_dict(Outer, {})
    out = write_resolved_config(cfg, tmp_path / "out")
    assert read_yaml(out)["inner"]["rank"] == 4


@dataclass
class Choices:
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    switch: Literal["auto", "on", "off"] = "auto"
    answer: Literal["yes", "no", "maybe"] = "maybe"
    graph: Optional[Literal["on", "off"]] = None
    either: Union[Literal["auto", "on", "off"], bool] = "auto"


def test_yaml_booleans_for_string_choices(tmp_path):
    """YAML 1.1 reads unquoted no/off/yes/on as booleans: where a choice is spelled so, it is that choice;
    where none is, the message says what YAML did instead of "False is not one of"."""
    cfg = config_from_dict(Choices, {}, ["switch=off", "answer=no", "graph=on"])
    assert (cfg.switch, cfg.answer, cfg.graph) == ("off", "no", "on")
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  switch: on\n  answer: yes\n")
    cfg = load_stage_config(Choices, path, "train")
    assert (cfg.switch, cfg.answer) == ("on", "yes")
    assert config_from_dict(Choices, {}, ["either=off"]).either is False  # a bool member keeps the bool
    with pytest.raises(ConfigError) as err:
        config_from_dict(Choices, {}, ["precision=no"], where="train")
    message = str(err.value)
    assert "train.precision" in message and "YAML reads an unquoted no / off / false" in message
    assert "['auto', 'fp32', 'bf16']" in message


def test_train_mixed_precision_no_is_explained():
    from training.train import load_config

    with pytest.raises(ConfigError, match=r"mixed_precision: got the boolean false \(YAML reads an unquoted no"):
        load_config(None, ["mixed_precision=no"])


@dataclass
class Entry:
    prompts: str
    target_pairs: int = 10


@dataclass
class WithEntries:
    risks: dict[str, Entry] = field(default_factory=dict)
    table: dict[str, Entry] = field(default_factory=lambda: {"base": Entry("p")})
    weights: dict[str, float] = field(default_factory=dict)


def test_override_of_an_unknown_entry_names_it_and_the_configured_ones():
    data = {"risks": {"exposure": {"prompts": "a"}, "stereotype": {"prompts": "b"}}}
    cfg = config_from_dict(WithEntries, data, ["risks.exposure.target_pairs=5"])
    assert cfg.risks["exposure"].target_pairs == 5
    with pytest.raises(ConfigError) as err:
        config_from_dict(WithEntries, data, ["risks.exposur.target_pairs=5"], where="curate")
    message = str(err.value)
    assert "unknown risk 'exposur'; configured risks: ['exposure', 'stereotype']" in message
    assert "required key" not in message
    # A section left out of the data holds its default entries.
    with pytest.raises(ConfigError, match=r"unknown table entry 'bsae'; configured table: \['base'\]"):
        config_from_dict(WithEntries, {}, ["table.bsae.target_pairs=5"])
    # A mapping of plain values still takes new keys; a whole new entry can still be given as a mapping.
    assert config_from_dict(WithEntries, {}, ["weights.new=0.5"]).weights == {"new": 0.5}
    assert config_from_dict(WithEntries, data, ["risks.extra={prompts: c}"]).risks["extra"].prompts == "c"


def test_curate_override_with_a_misspelt_risk():
    from data_curation.config import CurateConfig

    with pytest.raises(ConfigError, match=r"unknown risk 'exposur'; configured risks: \['association', 'exposure'"):
        load_stage_config(CurateConfig, "configs/demo.yaml", "curate", ["risks.exposur.target_pairs=5"])


@dataclass
class Section:
    depth: int = 1


@dataclass
class RenamedOuter:
    RENAMED_KEYS: ClassVar[dict[str, Renamed]] = {
        "model_path": Renamed("model"),
        "tensorboard": Renamed("report_to", lambda v: ("tensorboard" if v else "none") if isinstance(v, bool) else v),
    }
    model: str = "m"
    report_to: Literal["tensorboard", "none"] = "tensorboard"
    steps: int = 1
    inner: Section = field(default_factory=Section)


@dataclass
class RenamedInner:
    RENAMED_KEYS: ClassVar[dict[str, Renamed]] = {"depth_old": Renamed("depth")}
    depth: int = 1


@dataclass
class HoldsRenamed:
    inner: RenamedInner = field(default_factory=RenamedInner)


def test_renamed_keys_are_read_with_a_warning(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  model_path: old/place\n  tensorboard: false\n")
    with pytest.warns(FutureWarning, match=r"eval\.model_path is deprecated, use eval\.model"):
        cfg = load_stage_config(RenamedOuter, path, "eval")
    assert (cfg.model, cfg.report_to) == ("old/place", "none")  # the old value converted
    # An override with the new name wins over the file's old name, and the other way round.
    with pytest.warns(FutureWarning):
        assert load_stage_config(RenamedOuter, path, "eval", ["model=new/place"]).model == "new/place"
    path.write_text("eval:\n  model: new/place\n")
    with pytest.warns(FutureWarning, match="model_path is deprecated"):
        assert load_stage_config(RenamedOuter, path, "eval", ["eval.model_path=old/place"]).model == "old/place"
    with pytest.warns(FutureWarning, match="tensorboard is deprecated"):
        assert load_stage_config(RenamedOuter, path, "eval", ["tensorboard=true"]).report_to == "tensorboard"
    # Both names in one mapping: ambiguous.
    with pytest.raises(ConfigError, match="model_path is the old name of eval.model; set only eval.model"):
        config_from_dict(RenamedOuter, {"model": "a", "model_path": "b"}, where="eval")
    # In a nested section, from the data and from an override.
    with pytest.warns(FutureWarning, match=r"inner\.depth_old is deprecated, use inner\.depth"):
        assert config_from_dict(HoldsRenamed, {"inner": {"depth_old": 3}}).inner.depth == 3
    with pytest.warns(FutureWarning, match=r"inner\.depth_old is deprecated"):
        assert config_from_dict(HoldsRenamed, {}, ["inner.depth_old=4"]).inner.depth == 4
    # The resolved config has the new names only.
    out = write_resolved_config(cfg, tmp_path / "out")
    assert "model_path" not in read_yaml(out) and read_yaml(out)["model"] == "old/place"


@dataclass
class HasRemoved:
    REMOVED_KEYS: ClassVar[dict[str, str]] = {"gone": "measured and not adopted; see docs/experiments.md"}
    kept: int = 1


@dataclass
class HoldsRemoved:
    inner: HasRemoved = field(default_factory=HasRemoved)


def test_removed_keys_fail_with_their_note(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  gone: 3\n")
    with pytest.raises(ConfigError, match=r"train\.gone was removed: measured and not adopted; see docs/experiments\.md"):
        load_stage_config(HasRemoved, path, "train")
    with pytest.raises(ConfigError, match=r"train\.gone was removed"):
        load_stage_config(HasRemoved, None, "train", ["gone=3"])
    with pytest.raises(ConfigError, match=r"inner\.gone was removed"):
        config_from_dict(HoldsRemoved, {}, ["inner.gone.sub=4"])
    assert config_from_dict(HoldsRemoved, {"inner": {"kept": 2}}).inner.kept == 2
    with pytest.raises(ConfigError, match="unknown key"):  # any other unknown key: as before
        config_from_dict(HasRemoved, {"gonee": 1})


def test_load_without_value_checks_still_checks_keys_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: -1.0\n")
    with pytest.raises(ConfigError, match="lr must be positive"):
        load_stage_config(Outer, path, "train")
    assert load_stage_config(Outer, path, "train", validate=False).lr == -1.0
    with pytest.raises(ConfigError, match="unknown key"):
        load_stage_config(Outer, path, "train", ["lrr=1"], validate=False)
    with pytest.raises(ConfigError, match="expected an integer"):
        load_stage_config(Outer, path, "train", ["inner.rank=x"], validate=False)
