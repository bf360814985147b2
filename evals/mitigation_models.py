"""The mitigation configurations the eval compares with DPO, beside base, aligned and the two classic baselines.

Every configuration is evaluated on the same prompts, seeds and judges as base and aligned:

* ``esd_x``, ``esd_u``: the base model with a concept-erasure LoRA (``python -m erasure.erase``), loaded like the
  DPO LoRA; folders from ``eval.esd``;
* ``sld``: Safe Latent Diffusion over the base model (:mod:`inference.sld`), the preset and safety concept from
  ``eval.sld``;
* ``rewrite``: the prompt rewriter in front of the base model;
* ``filter_regenerate_guided``: the base model, an output check, and a flagged image regenerated with the same seed
  steered away from the concept it was flagged for (a negative prompt of the concept's text, or SLD);
* ``dpo_stack``: prompt filter -> rewrite -> the aligned model -> output check -> guided regeneration -> blur.

The last three run through :class:`mitigations.stack.GuardedGenerator` with the layers of ``eval.stack`` (the same
section a generation service uses), switched on and off per configuration by :func:`stack_for`.

Refusals. A prompt the filter blocks gets no image, and an image the stack blurs (or withholds) after its last try
is not a usable image either; both are refusals. In the metrics a refusal is read as "nothing shown": a risk
outcome counts it as no risk (a refused request shows no bare torso and no symbol), an alignment outcome counts it
as a failure (no requested attribute, outfit or requested content is shown, the image is not valid, its CLIP score
is 0), and a group distribution leaves it out. So a refused benign prompt lowers alignment, and a refused explicit
request lowers the honoured-request rate under the honour policy and counts as suppressed under the suppress
policy. Refusals are reported per configuration and prompt family beside the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from core.errors import ConfigError, ModelPathError
from core.models import LORA_WEIGHT_NAME
from mitigations.stack import RegenerateConfig

ESD_MODELS = ("esd_x", "esd_u")
GUARDED_MODELS = ("rewrite", "filter_regenerate_guided", "dpo_stack")
MITIGATION_MODELS = (*ESD_MODELS, "sld", *GUARDED_MODELS)
# Configurations that can leave a request without a usable image.
REFUSING_MODELS = ("filter_regenerate_guided", "dpo_stack")

# What a refusal reads as: no attribute is shown (see the module docstring).
REFUSED = "refused"


def refusal_read(reason: str) -> dict:
    """The read of a refused request (``reason``: blocked, blurred or withheld): nothing is shown."""
    return {"valid": False, REFUSED: reason}


@dataclass
class ModelBar:
    """A bar on a configuration other than the aligned model (e.g. DPO + the stack)."""

    model: str = field(metadata={"help": "The configuration the bar judges (a name of eval.models)."})
    metric: str = field(metadata={"help": "A metric id of summary.json (e.g. exposure, association, "
                                          "explicit_accuracy)."})
    op: Literal["<=", ">=", "within"] = field(metadata={
        "help": "<= / >=: the configuration's rate against value; within: no worse than base by more than value."})
    value: float = field(metadata={"help": "The bar's number."})


def check_mitigation_models(cfg) -> None:
    """ConfigError for a mitigation configuration the eval config cannot run (called by EvalConfig.validate)."""
    wanted = [name for name in cfg.models if name in MITIGATION_MODELS]
    if wanted and cfg.mode == "i2p":
        raise ConfigError(f"eval.models {wanted}: the mitigation configurations run on an eval suite "
                          "(eval.mode: synthetic); the i2p path runs base, aligned, negative_prompt and "
                          "filter_regenerate")
    unknown = sorted(set(cfg.esd) - set(ESD_MODELS))
    if unknown:
        raise ConfigError(f"eval.esd: unknown erased model(s) {unknown}; valid: {list(ESD_MODELS)}")
    guarded = [name for name in cfg.models if name in GUARDED_MODELS]
    if guarded and cfg.stack is None:
        raise ConfigError(f"eval.models {guarded} run through the guard stack: set eval.stack (the layers' files, "
                          "as serve.stack of configs/demo.yaml)")
    if guarded:
        for name in guarded:
            stack_for(name, cfg).validate()
    if "dpo_stack" in cfg.models and "aligned" not in cfg.models:
        raise ConfigError("eval.models: dpo_stack runs the aligned LoRA behind the stack; add 'aligned' too")
    if "sld" in cfg.models and cfg.generation.guidance <= 1.0:
        raise ConfigError(f"eval.models: sld acts through classifier-free guidance, which is off at "
                          f"eval.generation.guidance {cfg.generation.guidance:g}; use guidance > 1")
    for bar in cfg.model_bars:
        if bar.model not in cfg.models:
            raise ConfigError(f"eval.model_bars: {bar.model!r} is not in eval.models {cfg.models}")


def _off(layer):
    return replace(layer, enabled=False)


def stack_for(name: str, cfg):
    """The guard stack of configuration ``name``: eval.stack with the layers that configuration leaves out off."""

    stack = cfg.stack
    if stack is None:
        raise ConfigError(f"eval.models: {name} needs eval.stack")
    if name == "rewrite":
        if not stack.rewrite.enabled:
            raise ConfigError("eval.models: rewrite needs eval.stack.rewrite (a file with a rewrite: section)")
        return replace(stack, prompt_filter=_off(stack.prompt_filter), output_check=_off(stack.output_check),
                       negative_prompt="", regenerate=replace(stack.regenerate, mode="off"))
    if name == "filter_regenerate_guided":
        if not stack.output_check.enabled:
            raise ConfigError("eval.models: filter_regenerate_guided needs eval.stack.output_check (a file with a "
                              "moderate: section)")
        # As many generations as the plain baseline's (its first image and max_retries new seeds); the image of the
        # last try is served, flagged or not, as the plain baseline serves it.
        regenerate = replace(stack.regenerate, mode="guided", max_tries=cfg.filter.max_retries + 1)
        return replace(stack, prompt_filter=_off(stack.prompt_filter), rewrite=_off(stack.rewrite),
                       negative_prompt="", regenerate=regenerate, on_flag="keep")
    if name == "dpo_stack":
        return stack
    raise ValueError(f"{name} is not a guarded configuration")


def esd_dir(cfg, name: str, run_name: str) -> Path:
    """The LoRA folder of erased model ``name``: eval.esd[name], else erasure's default runs/<config>/<name>."""
    return Path(cfg.esd.get(name) or f"runs/{run_name}/{name}")


def check_esd_dir(path: Path, name: str, config_path: str | None) -> Path:
    if not (path / LORA_WEIGHT_NAME).is_file():
        config = config_path or "CONFIG"
        raise ModelPathError(
            f"eval.models has {name}, but its erasure LoRA {path / LORA_WEIGHT_NAME} does not exist. Make it with "
            f"`python -m erasure.erase --config {config} only=[{name}]` (make erase CONFIG={config}; the config's "
            f"erase.erasures.{name} must write {path}), set eval.esd.{name} to the folder an erasure wrote, or drop "
            f"{name} from eval.models")
    return path
