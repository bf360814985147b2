"""The trainer's shape: no function in training/ takes more than 8 parameters (state travels in the Trainer object
and small dataclasses, not in long argument lists), the callbacks replace test-only arguments, and the checkpoint
digests of the shipped configs are the ones checkpoints already hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from training.callbacks import StepControl, StepForm, StopAtStep, TrainerCallback
from training.checkpoints import config_digest
from training.config import TrainConfig
from training.reference_cache import reference_cache_key
from training.train import load_config
from training.trainer import Trainer

TRAINING = Path(__file__).resolve().parents[2] / "training"
MAX_PARAMETERS = 8


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> int:
    """Every parameter but ``self``/``cls``: positional, keyword-only, ``*args`` and ``**kwargs``."""
    args = node.args
    named = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs) if a.arg not in ("self", "cls")]
    return len(named) + (args.vararg is not None) + (args.kwarg is not None)


def long_signatures(source: str) -> list[tuple[str, int, int]]:
    """(name, line, parameter count) of the functions of ``source`` over the limit."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            count = parameter_count(node)
            if count > MAX_PARAMETERS:
                found.append((getattr(node, "name", "<lambda>"), node.lineno, count))
    return found


def test_no_function_in_training_takes_more_than_8_parameters():
    modules = sorted(TRAINING.rglob("*.py"))
    assert len(modules) > 10  # the package was found
    offenders = [f"{path.relative_to(TRAINING.parent)}:{line} {name} ({count} parameters)"
                 for path in modules for name, line, count in long_signatures(path.read_text())]
    assert not offenders, "bundle state into the Trainer or a small dataclass:\n" + "\n".join(offenders)


def test_the_count_sees_every_kind_of_parameter():
    source = """
class A:
    def method(self, a, b, c, d, e, f, g, h): ...
    @classmethod
    def build(cls, a, b, c, d, e, f, g, h, i): ...
def positional_only(a, b, /, c, d, e, f, g, h, i): ...
def keyword_only(a, *, b, c, d, e, f, g, h, i): ...
def star(a, b, c, d, e, f, g, *args, **kwargs): ...
double = lambda a, b, c, d, e, f, g, h, i: None
"""
    assert {name for name, _, _ in long_signatures(source)} == {
        "build", "positional_only", "keyword_only", "star", "<lambda>"}


def test_stop_at_step_asks_for_a_log_record_a_checkpoint_and_a_stop():
    control = StepControl(log=False, checkpoint=False)
    StopAtStep(3).on_step_end(None, 2, control)
    assert control == StepControl(log=False, checkpoint=False, stop=False)
    StopAtStep(3).on_step_end(None, 3, control)
    assert control == StepControl(log=True, checkpoint=True, stop=True)


def test_a_plain_callback_changes_nothing():
    form = StepForm(capture=False, static_inputs=False)
    TrainerCallback().on_step_form(None, form)
    assert not form.graph_path


def test_phases_run_in_order_and_are_timed(tiny_sd15_path, tiny_set, tmp_path):
    from tests.training.conftest import tiny_config

    seen = []

    class Recorder(TrainerCallback):
        def on_phase_end(self, trainer, phase, seconds):
            seen.append(("phase", phase))
            assert seconds >= 0

        def on_steps_begin(self, trainer):
            seen.append(("steps_begin", trainer.start_step))

        def on_step_begin(self, trainer, step):
            seen.append(("step", step))

        def on_log(self, trainer, done, values):
            seen.append(("log", done))

    summary = Trainer(tiny_config(tiny_sd15_path, tiny_set, tmp_path, "max_train_steps=2"), [Recorder()]).train()
    assert seen == [("phase", "setup"), ("phase", "caches"), ("phase", "model"), ("phase", "reference_pass"),
                    ("steps_begin", 0), ("step", 0), ("log", 1), ("step", 1), ("log", 2), ("phase", "steps"),
                    ("phase", "save")]
    assert list(summary["phase_seconds"]) == list(Trainer.PHASES[:-1])  # written during save


# Digests of checkpoints written before the kernel choices (allow_tf32, compile_backend, compile_options) left
# TrainConfig: those checkpoints must keep resuming.
DIGESTS = {
    None: "418f2c2168500a9a5fd45ba7",  # TrainConfig(model="models/synthetic-sd", data="set")
    "configs/demo.yaml": "3725db16e4d161156592c4a1",  # the demo recipe: text encoder LoRA, RPO 0.5, retain 0.4 on 16
    "configs/sd15.yaml": "f0f905420c3a7cc1f9afd07a",
    "configs/sdxl.yaml": "cd0d1c1f4a0d70175c5e6d39",
}


@pytest.mark.parametrize("config", list(DIGESTS))
def test_checkpoint_digests_of_the_shipped_configs_are_unchanged(config, monkeypatch):
    monkeypatch.chdir(TRAINING.parent)
    cfg = TrainConfig(model="models/synthetic-sd", data="set") if config is None else load_config(config, [])
    assert config_digest(cfg) == DIGESTS[config]


def test_reference_cache_key_is_unchanged():
    assert reference_cache_key("unet-fp", "pairs-abc", 0, 16, 0.1, "epsilon", "bf16") == "1877595310284d38c7c2d1ce"
