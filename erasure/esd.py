"""Erasing Concepts from Diffusion Models (ESD; Gandikota et al. 2023, arXiv 2303.07345), as a LoRA.

The objective (the paper's eq. 4). A frozen copy θ of the model gives the conditional and unconditional noise
predictions at a noisy latent x_t; the erased model θ* is trained so that, given the concept c, it predicts
what negative classifier-free guidance away from c would:

    ε_θ*(x_t, c, t)  ←  ε_θ(x_t, t) − η · [ε_θ(x_t, c, t) − ε_θ(x_t, t)]          (MSE, mean over all elements)

x_t is made the way the paper makes it: by sampling from the model *being trained*, prompted with c (DDIM, η_DDIM
= 0, classifier-free guidance ``sampling_guidance``), from pure noise down to a timestep t drawn uniformly from
the training schedule's 0..T−1. As training proceeds the erased model stops drawing the concept, so its x_t show
less of it; the objective follows the model's own samples rather than a fixed data set.

One detail differs from the original CompVis script: it stops a 50-step DDIM trajectory after a random number
of steps and then queries the UNets at a timestep drawn from that step's *forward* bin (step k of 50 -> t in
[20k, 20k + 20)), which does not match the noise level the latent was sampled to. Here the trajectory ends
exactly at t (the last DDIM step lands on it) and the UNets are queried at t, as the authors' later diffusers
script does with the scheduler's own timesteps.

Here θ* is θ plus a peft LoRA (``core.lora``) and θ is the same UNet with the adapter switched off, so no second
copy is held. ESD-x puts the LoRA on the cross-attention projections (``attn2``), ESD-u on every other linear and
convolution layer; the paper's ESD-u leaves out the time embedding and the output layer too (``noxattn``), and so
does this one, plus SDXL's pooled-text embedding, which is conditioning like cross-attention.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from core.lora import adapters_disabled

# Top-level UNet modules ESD-u leaves alone: the timestep embedding and the output convolution (the paper's
# ``time_embed`` and ``out.``), and SDXL's embedding of the pooled text and size conditioning.
ESD_U_EXCLUDED_PREFIXES = ("time_embedding.", "conv_out", "add_embedding.", "add_time_proj")


def esd_target(eps_uncond: torch.Tensor, eps_concept: torch.Tensor, eta: float) -> torch.Tensor:
    """ε(x_t, t) − η·[ε(x_t, c, t) − ε(x_t, t)] (paper eq. 4), all (B, C, h, w) from the frozen model."""
    return eps_uncond - eta * (eps_concept - eps_uncond)


def esd_loss(eps_erased: torch.Tensor, eps_uncond: torch.Tensor, eps_concept: torch.Tensor, eta: float) -> torch.Tensor:
    """Mean squared error of the erased model's ε*(x_t, c, t) against :func:`esd_target` (fp32)."""
    target = esd_target(eps_uncond.float(), eps_concept.float(), eta)
    return F.mse_loss(eps_erased.float(), target)


def esd_target_modules(unet: torch.nn.Module, method: str) -> list[str]:
    """Full names of the UNet's linear and convolution layers that method ``x`` or ``u`` adapts.

    x: every layer inside a cross-attention block (``attn2``: to_q, to_k, to_v, to_out.0). u: every linear and
    convolution layer outside them, minus :data:`ESD_U_EXCLUDED_PREFIXES`.
    """
    if method not in ("x", "u"):
        raise ValueError(f"ESD method must be 'x' or 'u', got {method!r}")
    names = []
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        cross_attention = "attn2" in name.split(".")
        if method == "x" and cross_attention:
            names.append(name)
        elif method == "u" and not cross_attention and not name.startswith(ESD_U_EXCLUDED_PREFIXES):
            names.append(name)
    return names


@dataclass
class ConceptConditioning:
    """The text conditioning of the concepts and of the empty prompt, encoded once.

    ``concept`` (K, L, D) and ``uncond`` (1, L, D) are the text encoder's hidden states; for SDXL ``concept_pooled``
    (K, P) / ``uncond_pooled`` (1, P) and ``time_ids`` (1, 6) are the extra UNet inputs (None for SD1.x/2.x).
    """

    concept: torch.Tensor
    uncond: torch.Tensor
    concept_pooled: torch.Tensor | None = None
    uncond_pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states (B, L, D) and pooled embeddings (B, P) of concepts ``index`` (B,)."""
        pooled = None if self.concept_pooled is None else self.concept_pooled[index]
        return self.concept[index], pooled

    def uncond_rows(self, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled = None if self.uncond_pooled is None else self.uncond_pooled.expand(count, -1)
        return self.uncond.expand(count, -1, -1), pooled


@torch.no_grad()
def encode_concepts(pipe, concepts: list[str], resolution: int, device) -> ConceptConditioning:
    """Encode the concepts and the empty prompt with the pipeline's own ``encode_prompt`` (both text encoders
    for SDXL), as generation encodes a prompt and its empty negative prompt."""
    count = len(concepts)
    out = pipe.encode_prompt(prompt=list(concepts), device=device, num_images_per_prompt=1,
                             do_classifier_free_guidance=True, negative_prompt=[""] * count)
    if len(out) == 2:  # SD1.x/2.x: (prompt_embeds, negative_prompt_embeds)
        return ConceptConditioning(concept=out[0], uncond=out[1][:1])
    concept, uncond, concept_pooled, uncond_pooled = out
    # SDXL's size conditioning (original size, crop top-left, target size) for an uncropped image of the native size.
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], device=device,
                            dtype=concept.dtype)
    return ConceptConditioning(concept=concept, uncond=uncond[:1], concept_pooled=concept_pooled,
                               uncond_pooled=uncond_pooled[:1], time_ids=time_ids)


def unet_output(unet, latents: torch.Tensor, t: int, hidden: torch.Tensor, pooled: torch.Tensor | None,
                time_ids: torch.Tensor | None) -> torch.Tensor:
    """The UNet's prediction (B, C, h, w) for latents (B, C, h, w) at timestep ``t`` (every row)."""
    timesteps = torch.full((latents.shape[0],), t, device=latents.device, dtype=torch.long)
    kwargs = {}
    if pooled is not None:
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.expand(latents.shape[0], -1)}
    return unet(latents, timesteps, encoder_hidden_states=hidden, return_dict=False, **kwargs)[0]


def to_epsilon(output: torch.Tensor, latents: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
               ) -> torch.Tensor:
    """The noise ε implied by a UNet output: itself for ε-prediction; for v-prediction (v = √ᾱ·ε − √(1−ᾱ)·x0,
    x_t = √ᾱ·x0 + √(1−ᾱ)·ε) ε = √ᾱ·v + √(1−ᾱ)·x_t."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * latents
    raise ValueError(f"ESD supports epsilon and v_prediction models, not prediction_type={prediction_type!r}")


def ddim_step(latents: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_next: torch.Tensor
              ) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12 with σ = 0) from ᾱ_t to ᾱ_t':
    x0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t;  x_t' = √ᾱ_t'·x0 + √(1−ᾱ_t')·ε."""
    x0 = (latents - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    return alpha_bar_next.sqrt() * x0 + (1 - alpha_bar_next).sqrt() * eps


def trajectory(num_train_timesteps: int, t_stop: int, sampling_steps: int) -> list[int]:
    """Timesteps of a DDIM trajectory from T−1 down to ``t_stop``, in steps of about T / sampling_steps: the
    part of a ``sampling_steps``-step sampling run that lies above ``t_stop`` (just [T−1] when t_stop = T−1)."""
    top = num_train_timesteps - 1
    count = math.ceil((top - t_stop) * sampling_steps / num_train_timesteps)
    if count == 0:
        return [top]
    return [round(top - (top - t_stop) * i / count) for i in range(count + 1)]


@torch.no_grad()
def sample_to(unet, noise: torch.Tensor, t_stop: int, cond: tuple, uncond: tuple, time_ids, guidance: float,
              alphas_cumprod: torch.Tensor, sampling_steps: int, prediction_type: str) -> torch.Tensor:
    """x_t at t = ``t_stop``: DDIM from ``noise`` (B, C, h, w) at T−1 with the UNet as it is (adapter on),
    classifier-free guided towards ``cond`` = (hidden (B, L, D), pooled (B, P) | None) away from ``uncond``."""
    latents = noise
    steps = trajectory(len(alphas_cumprod), t_stop, sampling_steps)
    hidden = torch.cat([uncond[0], cond[0]])
    pooled = None if cond[1] is None else torch.cat([uncond[1], cond[1]])
    for t, t_next in zip(steps[:-1], steps[1:]):
        output = unet_output(unet, torch.cat([latents, latents]), t, hidden, pooled, time_ids).float()
        out_uncond, out_cond = output.chunk(2)
        guided = out_uncond + guidance * (out_cond - out_uncond)  # guidance is linear, so ε- and v-outputs alike
        eps = to_epsilon(guided, latents, alphas_cumprod[t], prediction_type)
        latents = ddim_step(latents, eps, alphas_cumprod[t], alphas_cumprod[t_next])
    return latents


@dataclass(frozen=True)
class Draw:
    """One iteration's random choices: the concept of each image, the timestep and the starting noise."""

    concept_index: torch.Tensor  # (B,) int64
    timestep: int
    noise: torch.Tensor  # (B, C, h, w) float32, on the CPU


def draw(generator: torch.Generator, batch_size: int, num_concepts: int, num_train_timesteps: int,
         latent_shape: tuple[int, int, int]) -> Draw:
    """Drawn on the CPU from ``generator``, so a seed gives the same run on any device."""
    index = torch.randint(num_concepts, (batch_size,), generator=generator)
    t = int(torch.randint(num_train_timesteps, (1,), generator=generator))
    noise = torch.randn((batch_size, *latent_shape), generator=generator)
    return Draw(index, t, noise)


@dataclass
class StepParts:
    """What one ESD step computed, for logging and tests: x_t and the three predictions, all (B, C, h, w)."""

    latents: torch.Tensor
    eps_uncond: torch.Tensor
    eps_concept: torch.Tensor
    eps_erased: torch.Tensor
    loss: torch.Tensor


class ESDObjective:
    """The ESD loss of one draw, for a UNet with one LoRA adapter (``core.lora.add_lora_adapter``)."""

    def __init__(self, unet, conditioning: ConceptConditioning, alphas_cumprod: torch.Tensor, prediction_type: str,
                 eta: float, sampling_steps: int, sampling_guidance: float,
                 autocast: Callable[[], object] | None = None):
        self.unet, self.cond, self.eta = unet, conditioning, eta
        self.alphas_cumprod = alphas_cumprod.float()
        self.prediction_type = prediction_type
        self.sampling_steps, self.sampling_guidance = sampling_steps, sampling_guidance
        self.autocast = autocast or _no_autocast

    def __call__(self, d: Draw) -> StepParts:
        device = self.cond.concept.device
        index = d.concept_index.to(device)
        count = len(index)
        cond = self.cond.rows(index)
        uncond = self.cond.uncond_rows(count)
        with self.autocast():
            latents = sample_to(self.unet, d.noise.to(device), d.timestep, cond, uncond, self.cond.time_ids,
                                self.sampling_guidance, self.alphas_cumprod, self.sampling_steps,
                                self.prediction_type)
            with torch.no_grad(), adapters_disabled(self.unet):  # the frozen model θ
                hidden = torch.cat([uncond[0], cond[0]])
                pooled = None if cond[1] is None else torch.cat([uncond[1], cond[1]])
                frozen = unet_output(self.unet, torch.cat([latents, latents]), d.timestep, hidden, pooled,
                                     self.cond.time_ids)
                eps_uncond, eps_concept = frozen.float().chunk(2)
            eps_erased = unet_output(self.unet, latents, d.timestep, cond[0], cond[1], self.cond.time_ids).float()
        loss = esd_loss(eps_erased, eps_uncond, eps_concept, self.eta)
        return StepParts(latents, eps_uncond, eps_concept, eps_erased, loss)


class _NoAutocast:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _no_autocast():
    return _NoAutocast()


def train_esd(objective: ESDObjective, params: list[torch.nn.Parameter], *, iterations: int, learning_rate: float,
              batch_size: int, num_concepts: int, latent_shape: tuple[int, int, int], seed: int,
              max_grad_norm: float = 0.0, log_every: int = 50,
              on_log: Callable[[dict], None] | None = None) -> dict:
    """Adam on the LoRA weights for ``iterations`` ESD steps; returns the run's numbers (losses per log window,
    wall and CPU seconds, iterations per second)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    num_train_timesteps = len(objective.alphas_cumprod)
    log, window, start, cpu_start = [], [], time.perf_counter(), time.process_time()
    for iteration in range(1, iterations + 1):
        d = draw(generator, batch_size, num_concepts, num_train_timesteps, latent_shape)
        parts = objective(d)
        optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        window.append(float(parts.loss.detach()))
        if iteration % log_every == 0 or iteration == iterations:
            record = {"iteration": iteration, "loss": sum(window) / len(window),
                      "seconds": round(time.perf_counter() - start, 3)}
            log.append(record)
            window = []
            if on_log is not None:
                on_log(record)
    seconds = time.perf_counter() - start
    # CPU seconds of this process: on a shared machine the wall time says more about the neighbours.
    return {"log": log, "seconds": seconds, "cpu_seconds": time.process_time() - cpu_start,
            "iterations_per_s": iterations / seconds if seconds > 0 else float("nan"),
            "first_loss": log[0]["loss"] if log else None, "final_loss": log[-1]["loss"] if log else None}
