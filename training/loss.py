"""Diffusion-DPO loss (Wallace et al. 2023, arXiv 2311.12908, eq. 14) as small pure functions.

Notation (per pair; w = preferred "chosen" image, l = rejected image). Winner and loser are noised with
the *same* noise ε and the *same* timestep t, so their errors are comparable:

    err(m, x)  = mean over C,H,W of (m(x_t, t, c) - target)²        target = ε, or v for v-prediction
    Δθ         = err(θ, w)   - err(θ, l)          policy (LoRA on)
    Δref       = err(ref, w) - err(ref, l)        reference (LoRA off, no grad)
    h          = -β/2 · (Δθ - Δref)               the "inside term" = implicit reward margin
    sigmoid:   loss = -log σ(h)                   (the paper's loss; log 2 ≈ 0.693 at θ = ref)

β parametrisation. We use the paper's and the official code's form: β multiplies -1/2 · (Δθ - Δref); the
official SD1.5 run used β = 5000 (``--beta_dpo 5000`` with ``scale_term = -0.5 * beta_dpo``). diffusers'
``train_diffusion_dpo.py`` drops the 1/2 (``logits = ref_diff - model_diff``, ``loss = -logsigmoid(beta_dpo
* logits)``) and defaults to 2500. So ours β = 5000 == official 5000 == diffusers 2500: ours = 2 × diffusers.

Sign conventions. A *lower* denoising error means a higher likelihood, so a policy that improves the
winner relative to the reference has err(θ, w) < err(ref, w). The implicit rewards are therefore

    rewards/chosen   = -β/2 · (err(θ, w) - err(ref, w))
    rewards/rejected = -β/2 · (err(θ, l) - err(ref, l))
    rewards/margins  = chosen - rejected = h

Loss types (the trl DPO vocabulary, with the diffusion log-ratio z = h / β = -1/2 · (Δθ - Δref)):

* ``sigmoid``: -log σ(β z) (the paper);
* ``hinge``:   max(0, 1 - β z) (SLiC-style, as in trl);
* ``ipo``:     (z - 1/(2β))² (Azar et al. 2023, as in trl, with β playing IPO's τ). At θ = ref it is
  1/(4β²); its minimum is at a margin z = 1/(2β), not at infinity, which is the point of IPO;
* ``sft``:     err(θ, w) only: supervised fine-tuning on the preferred images (a baseline; needs no
  reference pass and ignores the loser).

RPO term (Pang et al. 2024, "Iterative Reasoning Preference Optimization"; trl's ``rpo_alpha``): DPO only
fixes the *difference* of the two likelihoods, and both can fall together. RPO adds α × the chosen image's
negative log-likelihood. For diffusion the NLL bound is the denoising error, and we write the term in the
implicit-reward units of the DPO loss, anchored at the reference so it is 0 at θ = ref:

    rpo = α · β/2 · (err(θ, w) - err(ref, w))  = -α · rewards/chosen

Its gradient is α · β/2 · ∇err(θ, w): a supervised pull toward the preferred images that does not saturate
the way -log σ(h) does once a pair is learned. α may differ per pair (per risk: training/config.py).

RPO toward a target mixture (``rpo_rejected_share`` s, ours): the pull goes to a mixture of the pair's two
images, weight 1 - s on the preferred one and s on the rejected one:

    rpo = α · β/2 · ((1 - s) · (err(θ, w) - err(ref, w)) + s · (err(θ, l) - err(ref, l)))
        = -α · ((1 - s) · rewards/chosen + s · rewards/rejected)

s = 0 is RPO above. It is for risks whose rejected image is not harmful in itself but over-represented: a
stereotype pair rejects the role's majority group and prefers one of the other groups, so the preferred
images alone hold the other k - 1 groups and plain RPO pulls the role toward *their* mix (max share
1/(k-1): 0.5 for 3 groups), never toward uniform. With s = 1/k the pull's target holds every group at 1/k
(the majority group's images as the rejected ones, the others as the preferred ones): uniform. The DPO
term still pushes the majority group down; the pull stops pushing once the shares reach the target.
s may differ per pair (per risk).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LossType = Literal["sigmoid", "hinge", "ipo", "sft"]
LOSS_TYPES: tuple[str, ...] = ("sigmoid", "hinge", "ipo", "sft")


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x2 -> (B,) mean squared error per sample, computed in float32."""
    diff = prediction.float() - target.float()
    return diff.pow(2).mean(dim=tuple(range(1, diff.ndim)))


def _is_set(option: torch.Tensor | float) -> bool:
    """True unless a per-pair option (ε, α) is the float 0 (a tensor counts as set: checking its values
    would sync)."""
    return isinstance(option, torch.Tensor) or option != 0.0


def diffusion_dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor | None,
    ref_err_l: torch.Tensor | None,
    beta: float,
    loss_type: LossType = "sigmoid",
    rpo_alpha: torch.Tensor | float = 0.0,
    rpo_rejected_share: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean loss over the batch and per-batch metric tensors (0-dim, still on device: no host sync).

    All error inputs are (B,) per-pair mean squared errors (see :func:`per_sample_mse`). ``ref_err_*``
    may be ``None`` only for ``sft``. ``rpo_alpha``: α of the RPO term, a float or a (B,)
    tensor >= 0 (not with ``sft``, which is that term alone). ``rpo_rejected_share``: s, the RPO pull's
    weight on the rejected image, a float or a (B,) tensor in [0, 1) (module docstring).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {list(LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if _is_set(rpo_rejected_share) and not _is_set(rpo_alpha):
        raise ValueError("rpo_rejected_share shapes the RPO term: it needs rpo_alpha > 0")
    if loss_type == "sft" and _is_set(rpo_alpha):
        raise ValueError("rpo_alpha does not apply to loss_type 'sft' (the sft loss is the chosen-image term alone)")
    model_err_w = model_err_w.float()
    model_err_l = model_err_l.float()
    metrics: dict[str, torch.Tensor] = {
        "mse/policy": 0.5 * (model_err_w.mean() + model_err_l.mean()).detach(),
        "mse/policy_chosen": model_err_w.mean().detach(),
        "mse/policy_rejected": model_err_l.mean().detach(),
    }
    if loss_type == "sft":
        loss = model_err_w.mean()
        metrics["loss"] = loss.detach()
        return loss, metrics
    if ref_err_w is None or ref_err_l is None:
        raise ValueError(f"loss_type {loss_type!r} needs the reference errors")
    ref_err_w = ref_err_w.float()
    ref_err_l = ref_err_l.float()

    # Implicit rewards (see module docstring for the signs); margin h is the sigmoid's argument.
    chosen_rewards = -0.5 * beta * (model_err_w - ref_err_w)
    rejected_rewards = -0.5 * beta * (model_err_l - ref_err_l)
    margin = chosen_rewards - rejected_rewards  # h = -β/2 (Δθ - Δref)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(margin)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - margin)
    else:  # ipo, on the un-scaled log-ratio z = h / β
        losses = (margin / beta - 1.0 / (2.0 * beta)).pow(2)
    if _is_set(rpo_alpha):
        alpha = torch.as_tensor(rpo_alpha, dtype=margin.dtype, device=margin.device)
        pulled = chosen_rewards  # the pull's target: the preferred image (s = 0)
        if _is_set(rpo_rejected_share):  # or the (1 - s, s) mixture of the pair's images
            share = torch.as_tensor(rpo_rejected_share, dtype=margin.dtype, device=margin.device)
            pulled = (1.0 - share) * chosen_rewards + share * rejected_rewards
        rpo = -alpha * pulled  # α·β/2·(err(θ, target) - err(ref, target))
        metrics["loss/dpo"] = losses.mean().detach()
        metrics["loss/rpo"] = rpo.mean().detach()
        losses = losses + rpo
    loss = losses.mean()

    metrics.update(
        {
            "loss": loss.detach(),
            "mse/reference": 0.5 * (ref_err_w.mean() + ref_err_l.mean()).detach(),
            "rewards/chosen": chosen_rewards.mean().detach(),
            "rewards/rejected": rejected_rewards.mean().detach(),
            "rewards/margins": margin.mean().detach(),
            # trl's definition: strictly better (0 at initialisation, where every margin is exactly 0).
            "rewards/accuracies": (margin > 0).float().mean().detach(),
            # The official/diffusers "implicit_acc": margin > 0, a tie counting one half (0.5 at init).
            "implicit_accuracy": ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().detach(),
        }
    )
    return loss, metrics
