"""One Diffusion-DPO forward: which pairs and noise a step uses, and the policy/reference passes.

Determinism (this is what makes resume exact and the 1-process / N-process / accumulation runs equal):
optimiser step ``s`` always trains on the same E = micro_batch × accumulation × processes pairs (a
window of a per-epoch permutation seeded by (seed, epoch)), with noise, timesteps and prompt-dropout
drawn for all E pairs from a generator seeded by (seed, s). Micro-step ``a`` of process ``r`` takes
slice ``a × processes + r``. Nothing depends on RNG state carried between steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, ContextManager, Mapping

import torch

from training.cache import PairBatch
from training.lora import adapters_disabled
from training.loss import diffusion_dpo_loss, per_sample_mse
from training.models import NoiseSchedule


@lru_cache(maxsize=4)
def epoch_permutation(num_pairs: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_pairs, generator=generator)


def step_pair_indices(step: int, pairs_per_step: int, num_pairs: int, seed: int) -> torch.Tensor:
    """(E,) pair indices of optimiser step ``step``: consecutive windows over shuffled epochs."""
    positions = torch.arange(step * pairs_per_step, (step + 1) * pairs_per_step)
    epochs, offsets = positions // num_pairs, positions % num_pairs
    out = torch.empty(pairs_per_step, dtype=torch.int64)
    for epoch in epochs.unique().tolist():
        mask = epochs == epoch
        out[mask] = epoch_permutation(num_pairs, seed, epoch)[offsets[mask]]
    return out


@dataclass
class StepDraws:
    """Random draws for the E pairs of one optimiser step (on the training device)."""

    indices: torch.Tensor  # (E,) pair indices, on the training device
    cpu_indices: torch.Tensor  # (E,) the same on the CPU (for sources that gather on the host)
    noise: torch.Tensor  # (E, C, h, w) shared by winner and loser
    timesteps: torch.Tensor  # (E,) int64, shared by winner and loser
    drop_prompt: torch.Tensor  # (E,) bool
    # (E, 2) float32 reference errors (winner, loser) of these draws from training/reference_cache.py's pass, on
    # the training device; None = the step runs the reference forward itself.
    reference_errors: torch.Tensor | None = None

    def micro_slice(self, micro_step: int, process: int, num_processes: int, micro_batch: int) -> "StepDraws":
        start = (micro_step * num_processes + process) * micro_batch
        w = slice(start, start + micro_batch)
        cached = self.reference_errors[w] if self.reference_errors is not None else None
        return StepDraws(self.indices[w], self.cpu_indices[w], self.noise[w], self.timesteps[w], self.drop_prompt[w],
                         cached)


def static_draws_like(draws: StepDraws, device) -> StepDraws:
    """Static input tensors of a captured step (training/graph.py), shaped like ``draws``: the device fields on
    ``device``, ``cpu_indices`` on the host. Filled per step by :func:`copy_draws_`."""
    device = torch.device(device)
    cached = draws.reference_errors
    return StepDraws(
        torch.empty_like(draws.indices, device=device), torch.empty_like(draws.cpu_indices, device="cpu"),
        torch.empty_like(draws.noise, device=device), torch.empty_like(draws.timesteps, device=device),
        torch.empty_like(draws.drop_prompt, device=device),
        torch.empty_like(cached, device=device) if cached is not None else None,
    )


def copy_draws_(static: StepDraws, draws: StepDraws) -> None:
    """Copy one step's draws into the static inputs of a captured step, in place (the graph reads those
    addresses). Host tensors go through pinned memory, so the copies are queued on the stream like kernels
    (no host sync), after the previous replay that read the buffers and before the next one.

    A captured graph sees only device memory: ``cpu_indices`` is kept in step for the eager static form, but a
    source that gathers on the host (``CachedPairSource`` with ``on_device`` False) is never captured (graph.py)."""
    for name in ("indices", "cpu_indices", "noise", "timesteps", "drop_prompt", "reference_errors"):
        dst, src = getattr(static, name), getattr(draws, name)
        if dst is None and src is None:
            continue
        if dst is None or src is None:
            raise ValueError(f"draws.{name} is {'missing' if src is None else 'given'}, unlike the static inputs")
        if dst.shape != src.shape or dst.dtype != src.dtype:
            # copy_ would broadcast a smaller source silently.
            raise ValueError(f"draws.{name} {tuple(src.shape)} {src.dtype} does not fit the static "
                             f"{tuple(dst.shape)} {dst.dtype}")
        if src.device.type == "cpu" and dst.device.type == "cuda":
            src = src.pin_memory()
        dst.copy_(src, non_blocking=True)


def to_device_async(tensor: torch.Tensor, device) -> torch.Tensor:
    """Host -> device copy that does not stall the host: a copy from pageable memory synchronises the
    stream first, one from pinned memory is queued like a kernel."""
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass(frozen=True)
class DrawShape:
    """What one step draws: ``count`` items (a window of the per-epoch permutation of ``num_items``), one noise
    tensor of ``latent_shape`` (C, h, w) and one timestep in [0, ``num_train_timesteps``) per item, and prompt
    dropout flags at rate ``prompt_dropout`` (None: no flags are drawn; all False)."""

    count: int
    num_items: int
    latent_shape: tuple[int, int, int]
    num_train_timesteps: int
    prompt_dropout: float | None


def _draw(generator_seed: int, index_seed: int, step: int, shape: DrawShape, device) -> StepDraws:
    """``shape.count`` items of step ``step`` (a window of the per-epoch permutation seeded by ``index_seed``),
    with noise, timesteps and (if ``shape.prompt_dropout`` is given) dropout flags from one generator.

    A CPU generator keeps the draws identical across devices and process counts; E × C×h×w floats
    per optimiser step is cheap next to 6 UNet passes per pair."""
    count = shape.count
    generator = torch.Generator().manual_seed(generator_seed)
    noise = torch.randn((count, *shape.latent_shape), generator=generator)
    timesteps = torch.randint(0, shape.num_train_timesteps, (count,), generator=generator)
    if shape.prompt_dropout is None:
        drop = torch.zeros(count, dtype=torch.bool)
    else:
        drop = torch.rand(count, generator=generator) < shape.prompt_dropout
    indices = step_pair_indices(step, count, shape.num_items, index_seed)
    return StepDraws(
        to_device_async(indices, device), indices, to_device_async(noise, device),
        to_device_async(timesteps, device), to_device_async(drop, device),
    )


def draw_step(
    step: int, seed: int, pairs_per_step: int, num_pairs: int, latent_shape: tuple[int, int, int],
    num_train_timesteps: int, prompt_dropout: float, device,
) -> StepDraws:
    """The pairs, noise, timesteps and prompt dropout of optimiser step ``step``."""
    shape = DrawShape(pairs_per_step, num_pairs, latent_shape, num_train_timesteps, prompt_dropout)
    return _draw(seed * 7_919 + step * 104_729 + 17, seed, step, shape, device)


def draw_retain_step(step: int, seed: int, images_per_step: int, num_images: int, latent_shape: tuple[int, int, int],
                     num_train_timesteps: int, device) -> StepDraws:
    """The retain images, noise and timesteps of optimiser step ``step``: their own stream (independent
    of the pairs'), same rules as :func:`draw_step`, no prompt dropout."""
    shape = DrawShape(images_per_step, num_images, latent_shape, num_train_timesteps, None)
    return _draw(seed * 6_151 + step * 92_821 + 29, seed + 1, step, shape, device)


def _conditioning(batch, repeats: int) -> dict[str, torch.Tensor]:
    """UNet conditioning of a batch (text states; SDXL pooled text and time ids), each repeated
    ``repeats`` times along the batch (2 for winner + loser)."""
    cond = {"encoder_hidden_states": batch.prompt_embeds.repeat(repeats, 1, 1)}
    if batch.input_ids is not None:
        cond["input_ids"] = batch.input_ids.repeat(repeats, 1)
        cond["trains_text"] = batch.trains_text.repeat(repeats)
    if batch.pooled_embeds is not None:
        cond["text_embeds"] = batch.pooled_embeds.repeat(repeats, 1)
        cond["time_ids"] = batch.time_ids.repeat(repeats, 1)
    return cond


def _pair_inputs(batch: PairBatch, draws: StepDraws, schedule: NoiseSchedule):
    """Winner and loser stacked along the batch, noised with the same noise and timestep:
    (noisy (2B, C, h, w), timesteps (2B,), conditioning kwargs, denoising targets (2B, C, h, w))."""
    latents = torch.cat([batch.latents_w, batch.latents_l])  # (2B, C, h, w)
    noise = draws.noise.repeat(2, 1, 1, 1)
    timesteps = draws.timesteps.repeat(2)
    cond = _conditioning(batch, repeats=2)
    return schedule.add_noise(latents, noise, timesteps), timesteps, cond, schedule.target(latents, noise, timesteps)


def _retain_inputs(batch, draws: StepDraws, schedule: NoiseSchedule):
    """(noisy (R, C, h, w), timesteps (R,), conditioning kwargs, denoising targets) of a retain batch."""
    cond = _conditioning(batch, repeats=1)
    noisy = schedule.add_noise(batch.latents, draws.noise, draws.timesteps)
    return noisy, draws.timesteps, cond, schedule.target(batch.latents, draws.noise, draws.timesteps)


@dataclass(frozen=True)
class StepModel:
    """The UNet as one DPO step runs it. ``unet`` is what the optimiser trains (possibly DDP-wrapped): the policy
    forward. ``unwrapped`` is the same module without the wrapper, used to switch the adapters off for the
    reference forward (no grad). ``autocast``: a zero-argument factory of the forward's autocast context
    (``accelerator.autocast``); ``channels_last``: NHWC inputs (``train.channels_last``). ``text``: the trained
    text encoder (training/text_lora.py, possibly DDP-wrapped) that encodes the policy's captions from their token
    ids; None: the policy reads the cached states, as the reference always does."""

    unet: torch.nn.Module
    unwrapped: torch.nn.Module
    schedule: NoiseSchedule
    autocast: Callable[[], ContextManager]
    channels_last: bool = False
    text: torch.nn.Module | None = None


@dataclass(frozen=True)
class DpoObjective:
    """The step's loss settings: β in the paper's −β/2 form and the loss type (training/loss.py), and the retain
    anchor's weight (in units of β/2) and target (training/config.py: RetainSettings)."""

    beta: float
    loss_type: str
    retain_weight: float = 0.0
    retain_target: str = "reference"

    @classmethod
    def from_config(cls, cfg) -> "DpoObjective":
        return cls(cfg.beta, cfg.loss_type, cfg.retain.weight, cfg.retain.target)


def _unet_call(module, noisy, timesteps, cond, channels_last: bool, text=None) -> torch.Tensor:
    """One UNet forward; with ``text`` (the trained text encoder) the text states of the rows marked
    ``cond["trains_text"]`` come from it, from their token ids ``cond["input_ids"]``, the others' from the cached
    ``cond["encoder_hidden_states"]`` (the frozen encoder's)."""
    if channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    states = cond["encoder_hidden_states"]
    if text is not None:
        states = torch.where(cond["trains_text"].view(-1, 1, 1), text(cond["input_ids"]).to(states.dtype), states)
    kwargs = {"encoder_hidden_states": states}
    if "text_embeds" in cond:
        kwargs["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
    return module(noisy, timesteps, **kwargs).sample


def _reference_prediction(model: StepModel, noisy, timesteps, cond) -> torch.Tensor:
    """The reference (LoRA off, no grad) prediction for the rows of ``noisy``."""
    with torch.no_grad(), adapters_disabled(model.unwrapped), model.autocast():
        return _unet_call(model.unwrapped, noisy, timesteps, cond, model.channels_last)


def reference_pair_errors(model: StepModel, batch: PairBatch, draws: StepDraws) -> torch.Tensor:
    """(B, 2) float32 reference errors (winner, loser) of one micro-batch: the reference half of
    :func:`pair_errors`, with the same inputs and the same call (so the same compiled graph), for
    training/reference_cache.py's pass."""
    noisy, timesteps, cond, target = _pair_inputs(batch, draws, model.schedule)
    ref_pred = _reference_prediction(model, noisy, timesteps, cond)
    return torch.stack(per_sample_mse(ref_pred, target).chunk(2), dim=1)


def pair_errors(
    model: StepModel, batch: PairBatch, draws: StepDraws, with_reference: bool, retain=None,
    retain_target: str = "reference",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(B,) denoising MSEs: policy winner, policy loser, reference winner, reference loser; and the
    retain anchoring distance (0-dim) when ``retain`` = (retain batch, its draws) is given.

    Winner and loser are noised with the same noise and timestep. The policy runs ``model.unet``; the reference
    runs ``model.unwrapped`` with the adapters off (no grad). Retain images ride in the same forward as the pairs
    (one policy call per micro-step: DDP expects one forward per backward, and one larger batch is faster).
    With ``draws.reference_errors`` set (training/reference_cache.py) the pairs' reference errors are read from it
    and no reference forward runs, unless the retain rows need one.
    """
    noisy, timesteps, cond, target = _pair_inputs(batch, draws, model.schedule)
    num_pair_rows = noisy.shape[0]
    if retain is not None:
        r_noisy, r_timesteps, r_cond, r_target = _retain_inputs(*retain, model.schedule)
        noisy, timesteps = torch.cat([noisy, r_noisy]), torch.cat([timesteps, r_timesteps])
        cond = {key: torch.cat([value, r_cond[key]]) for key, value in cond.items()}

    cached = draws.reference_errors  # (B, 2) from the reference-loss pass, or None
    ref_pred = None
    if (with_reference and cached is None) or retain is not None:
        ref_pred = _reference_prediction(model, noisy, timesteps, cond)
    with model.autocast():
        model_pred = _unet_call(model.unet, noisy, timesteps, cond, model.channels_last, model.text)

    model_err_w, model_err_l = per_sample_mse(model_pred[:num_pair_rows], target).chunk(2)
    ref_err_w = ref_err_l = None
    if with_reference and cached is not None:
        ref_err_w, ref_err_l = cached.unbind(1)
    elif with_reference:
        ref_err_w, ref_err_l = per_sample_mse(ref_pred[:num_pair_rows], target).chunk(2)
    retain_distance = None
    if retain is not None:
        policy, reference = model_pred[num_pair_rows:], ref_pred[num_pair_rows:]
        if retain_target == "reference":
            # ||ε_θ - ε_ref||²: the KL anchor; 0 with zero gradient while θ = ref (LoRA B = 0).
            retain_distance = per_sample_mse(policy, reference).mean()
        else:
            # "data": ||ε_θ - ε||² - ||ε_ref - ε||², prior preservation on the (filtered) retain images.
            # Same gradient as plain denoising on them; the reference term only makes it 0 at θ = ref.
            retain_distance = (per_sample_mse(policy, r_target) - per_sample_mse(reference, r_target)).mean()
    return model_err_w, model_err_l, ref_err_w, ref_err_l, retain_distance


def dpo_loss_on_batch(
    model: StepModel, batch: PairBatch, draws: StepDraws, objective: DpoObjective, retain=None,
    pair_options: Mapping[str, torch.Tensor | float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The step's loss and metrics on one micro-batch (see :func:`pair_errors`). ``pair_options``: the per-pair
    options of training/loss.py's ``diffusion_dpo_loss`` by name, ``rpo_alpha`` (α of the RPO term) and
    ``rpo_rejected_share`` (its weight on the rejected image), each a (B,) tensor for the micro-batch's pairs or a
    float for all; absent: 0.

    With a retain batch: loss = DPO loss + retain_weight · β/2 · mean ||ε_θ - ε_ref||² (training/config.py).
    """
    *errors, retain_distance = pair_errors(model, batch, draws, objective.loss_type != "sft", retain,
                                           objective.retain_target)
    loss, metrics = diffusion_dpo_loss(*errors, objective.beta, objective.loss_type, **(pair_options or {}))
    if retain_distance is not None:
        loss = loss + objective.retain_weight * 0.5 * objective.beta * retain_distance
        metrics["retain/distance"] = retain_distance.detach()
        metrics.setdefault("loss/dpo", metrics["loss"])  # the preference loss alone (set by the loss with RPO)
        metrics["loss"] = loss.detach()
    return loss, metrics
