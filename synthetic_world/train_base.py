"""`make base`: train the synthetic world's Stable Diffusion pipeline (and its CLIP) from scratch.

    python -m synthetic_world.train_base --config configs/base.yaml [stages=[vae,unet]] [key=value ...]

Stages, each resumable from ``<work_dir>/<stage>/`` when a command's time limit stops it:
  vae   AutoencoderKL on renders: L1 + MSE reconstruction + a small KL term.
  unet  UNet + CLIP text encoder jointly (text encoder from scratch), DDPM epsilon loss with Min-SNR
        weighting, 10% empty captions for classifier-free guidance, EMA weights; saves the pipeline
        in fp16 safetensors to ``output_dir`` with TRAINING.md.
  clip  the small open_clip model (synthetic_world.clip_model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from core.cli import resolve_device, run_main
from core.config import load_stage_config, to_dict, write_resolved_config
from core.errors import ConfigError
from core.io import atomic_directory, atomic_write_json, atomic_write_text
from synthetic_world import base_models
from synthetic_world.renderer import render_tensor
from synthetic_world.sampler import sample_training_pairs
from synthetic_world.training_utils import (
    Deadline,
    Ema,
    autocast,
    hardware_name,
    load_checkpoint,
    save_checkpoint,
    warmup_cosine,
)
from synthetic_world.world_config import WorldConfig


# ---- data ----------------------------------------------------------------------------------------


def sample_pool(n: int, seed: int) -> tuple[list[str], list]:
    """n (caption, Scene) pairs from the biased "web data" sampler -> (captions, scenes)."""
    pairs = sample_training_pairs(n, seed)
    return [c for c, _ in pairs], [s for _, s in pairs]


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Captions -> (N, max_length) token ids, padded as StableDiffusionPipeline pads prompts."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=False).input_ids
    too_long = [c for c, i in zip(captions, ids) if len(i) > tokenizer.model_max_length]
    if too_long:
        raise ConfigError(
            f"{len(too_long)} captions exceed text.max_length={tokenizer.model_max_length} tokens "
            f"(e.g. {too_long[0]!r}); raise world.text.max_length"
        )
    return torch.tensor(ids, dtype=torch.long)


def render_batch(scenes: list, device: torch.device) -> torch.Tensor:
    """Scenes -> images in [-1, 1], (N, 3, 64, 64), rendered on ``device``."""
    return render_tensor(scenes, device) * 2.0 - 1.0


# ---- stage: VAE ----------------------------------------------------------------------------------


def vae_loss(vae, images: torch.Tensor, cfg) -> tuple[torch.Tensor, dict]:
    posterior = vae.encode(images).latent_dist
    recon = vae.decode(posterior.sample()).sample
    l1 = (recon - images).abs().mean()
    mse = F.mse_loss(recon, images)
    kl = posterior.kl().mean()  # summed over latent dims, mean over the batch
    loss = cfg.l1_weight * l1 + cfg.mse_weight * mse + cfg.kl_weight * kl
    return loss, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def train_vae(cfg: WorldConfig, device: torch.device, deadline: Deadline) -> bool:
    """Train (or resume) the VAE; True when finished and saved to ``<work_dir>/vae/final``."""
    work = Path(cfg.work_dir) / "vae"
    final = work / "final"
    if (final / "config.json").is_file():
        print(f"vae: already trained at {final}")
        return True
    tc = cfg.vae_training
    torch.manual_seed(cfg.seed)
    vae = base_models.build_vae(cfg.vae).to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=tc.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(min(200, tc.steps // 10), tc.steps))
    meta = load_checkpoint(work, {"vae": vae}, optimizer, {}) or {"step": 0, "wall_s": 0.0}
    step, wall_before = meta["step"], meta["wall_s"]
    schedule.last_epoch = step - 1
    _, scenes = sample_pool(max(tc.batch_size * 50, 5000), cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + step)
    start = time.monotonic()
    bar = tqdm(total=tc.steps, initial=step, desc="vae", mininterval=5)
    stats: dict = {}
    while step < tc.steps:
        idx = torch.randint(len(scenes), (tc.batch_size,), generator=gen).tolist()
        images = render_batch([scenes[i] for i in idx], device)
        with autocast(device):
            loss, stats = vae_loss(vae, images, tc)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", l1=f"{stats['l1']:.4f}")
        if deadline.passed() and step < tc.steps:
            save_checkpoint(work, step, {"vae": vae}, optimizer, {}, {"wall_s": wall_before + time.monotonic() - start})
            print(f"vae: time limit reached at step {step}/{tc.steps}; checkpoint in {work}; rerun to resume")
            return False
    bar.close()
    vae.eval()
    # SD's latent scaling: make the latents of the training distribution unit-variance.
    with torch.no_grad():
        probe = render_batch(scenes[:1024], device)
        latents = torch.cat([vae.encode(chunk).latent_dist.sample() for chunk in probe.split(256)])
        scaling = 1.0 / latents.float().std().item()
        recon = vae.decode(vae.encode(probe[:256]).latent_dist.mode()).sample
        recon_l1 = (recon - probe[:256]).abs().mean().item() / 2.0  # in [0, 1] pixel units
    vae.register_to_config(scaling_factor=scaling)
    record = {
        "steps": tc.steps,
        "wall_s": round(wall_before + time.monotonic() - start, 1),
        "scaling_factor": scaling,
        "final_loss": stats,
        "recon_l1_pixels_0_1": recon_l1,
        "hardware": hardware_name(device),
    }
    with atomic_directory(final, overwrite=True) as tmp:
        vae.save_pretrained(str(tmp), safe_serialization=True)
    atomic_write_json(work / "record.json", record)
    print(f"vae: done {record}")
    return True


# ---- stage: UNet + text encoder ------------------------------------------------------------------


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction: min(SNR(t), gamma) / SNR(t) (Hang et al. 2023)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    return torch.clamp(snr, max=gamma) / snr


@torch.no_grad()
def encode_pool(vae, scenes: list, device: torch.device, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Render and VAE-encode every scene once: posterior means and stds, (N, 4, 16, 16) each, bf16/fp32."""
    means, stds = [], []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for start in tqdm(range(0, len(scenes), chunk), desc="encode pool", mininterval=5):
        dist = vae.encode(render_batch(scenes[start : start + chunk], device)).latent_dist
        means.append(dist.mean.to(dtype))
        stds.append(dist.std.to(dtype))
    return torch.cat(means), torch.cat(stds)


def diffusion_loss(unet, text_encoder, scheduler, latents, token_ids, gamma: float) -> torch.Tensor:
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    hidden = text_encoder(token_ids)[0]  # (B, max_length, hidden): what the pipeline conditions on
    pred = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
    per_sample = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    if gamma > 0:
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, gamma)
    return per_sample.mean()


def train_unet(cfg: WorldConfig, device: torch.device, deadline: Deadline, config_path: str | None) -> bool:
    vae_dir = Path(cfg.work_dir) / "vae" / "final"
    if not (vae_dir / "config.json").is_file():
        raise ConfigError(f"unet stage needs the trained VAE at {vae_dir}; run stage vae first")
    work = Path(cfg.work_dir) / "unet"
    tc = cfg.unet_training
    vae = AutoencoderKL.from_pretrained(str(vae_dir)).to(device).eval().requires_grad_(False)
    scaling = vae.config.scaling_factor
    tokenizer = base_models.build_tokenizer(cfg.text, work / "tokenizer")
    torch.manual_seed(cfg.seed)
    text_encoder = base_models.build_text_encoder(cfg.text, tokenizer).to(device).train()
    unet = base_models.build_unet(cfg.unet, cfg.vae, cfg.text).to(device).train()
    scheduler = base_models.build_train_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(tc.warmup_steps, tc.steps))
    emas = {"unet": Ema(list(unet.parameters()), tc.ema_decay), "text": Ema(list(text_encoder.parameters()), tc.ema_decay)}
    modules = {"unet": unet, "text": text_encoder}
    meta = load_checkpoint(work, modules, optimizer, emas) or {"step": 0, "wall_s": 0.0, "losses": []}
    step, wall_before, losses = meta["step"], meta["wall_s"], meta["losses"]
    schedule.last_epoch = step - 1
    if step >= tc.steps and (Path(cfg.output_dir) / "model_index.json").is_file():
        print(f"unet: already trained ({step} steps), pipeline at {cfg.output_dir}")
        return True

    captions, scenes = sample_pool(tc.pool_size, cfg.seed + 2)
    token_ids = tokenize(tokenizer, captions).to(device)
    empty_ids = tokenize(tokenizer, [""]).to(device)
    latent_mean, latent_std = encode_pool(vae, scenes, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 10_000 + step)
    start = time.monotonic()
    bar = tqdm(total=tc.steps, initial=step, desc="unet+text", mininterval=5)
    running = 0.0
    while step < tc.steps:
        idx = torch.randint(len(scenes), (tc.batch_size,), device=device, generator=gen)
        eps = torch.randn(latent_mean[idx].shape, device=device, generator=gen, dtype=latent_mean.dtype)
        latents = ((latent_mean[idx] + latent_std[idx] * eps) * scaling).float()
        ids = token_ids[idx]
        drop = torch.rand(tc.batch_size, device=device, generator=gen) < tc.caption_dropout
        ids = torch.where(drop[:, None], empty_ids.expand_as(ids), ids)
        with autocast(device):
            loss = diffusion_loss(unet, text_encoder, scheduler, latents, ids, tc.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        emas["unet"].update(step)
        emas["text"].update(step)
        running += loss.item() if step % 50 == 0 else 0.0
        bar.update(1)
        if step % 500 == 0:
            losses.append([step, running / 10])
            bar.set_postfix(loss=f"{running / 10:.4f}")
            running = 0.0
        done = step >= tc.steps
        if done or step % tc.checkpoint_every == 0 or deadline.passed():
            save_checkpoint(work, step, modules, optimizer, emas,
                            {"wall_s": wall_before + time.monotonic() - start, "losses": losses})
        if deadline.passed() and not done:
            print(f"unet: time limit reached at step {step}/{tc.steps}; checkpoint in {work}; rerun to resume")
            return False
    bar.close()
    wall = wall_before + time.monotonic() - start
    emas["unet"].copy_to(list(unet.parameters()))
    emas["text"].copy_to(list(text_encoder.parameters()))
    pipe = base_models.assemble_pipeline(vae, text_encoder.eval(), tokenizer, unet.eval(), cfg.sampler)
    vae_record = json.loads((Path(cfg.work_dir) / "vae" / "record.json").read_text())
    record = {"steps": tc.steps, "wall_s": round(wall, 1), "loss_curve": losses, "hardware": hardware_name(device)}
    with atomic_directory(cfg.output_dir, overwrite=True) as tmp:
        base_models.save_pipeline_fp16(pipe, tmp)
        write_resolved_config(cfg, tmp)
        atomic_write_text(tmp / "TRAINING.md", training_card(cfg, config_path, vae_record, record))
    print(f"unet: done in {wall:.0f}s; pipeline saved to {cfg.output_dir}")
    return True


def training_card(cfg: WorldConfig, config_path: str | None, vae_record: dict, unet_record: dict) -> str:
    sizes = base_models.describe(cfg)
    flops = base_models.gflops_per_image(cfg)
    unet_calls = cfg.report.steps * (2 if cfg.report.guidance > 1 else 1)  # CFG doubles the batch
    recipe_gflops = unet_calls * flops["unet"] + flops["vae_decode"]
    return f"""# How models/synthetic-sd was trained

Trained from scratch by `make base` (`python -m synthetic_world.train_base --config {config_path}`),
seed {cfg.seed}, on **{unet_record['hardware']}**.

| stage | steps | batch | wall time | notes |
|---|---|---|---|---|
| VAE (AutoencoderKL, {sizes['vae_M']:.2f}M params) | {vae_record['steps']} | {cfg.vae_training.batch_size} | {vae_record['wall_s']} s | L1+MSE+{cfg.vae_training.kl_weight:g}*KL; recon L1 {vae_record['recon_l1_pixels_0_1']:.4f} (pixels in [0,1]); scaling_factor {vae_record['scaling_factor']:.4f} |
| UNet ({sizes['unet_M']:.2f}M) + CLIPTextModel ({sizes['text_encoder_M']:.2f}M, vocab {sizes['vocab_size']}) | {unet_record['steps']} | {cfg.unet_training.batch_size} | {unet_record['wall_s']} s | DDPM epsilon, Min-SNR-{cfg.unet_training.min_snr_gamma:g}, caption dropout {cfg.unet_training.caption_dropout}, EMA {cfg.unet_training.ema_decay} |

Default recipe: `{type(base_models.build_sampler(cfg.sampler)).__name__}` ({cfg.sampler}, the saved
scheduler), **{cfg.report.steps} steps at guidance {cfg.report.guidance}** (the world report's settings). Weights are
fp16 safetensors; load with `StableDiffusionPipeline.from_pretrained("{cfg.output_dir}")`.

Cost per 64 px image (forward GFLOPs, torch FlopCounterMode): UNet {flops['unet']:.3f} per call, VAE decode
{flops['vae_decode']:.3f}, VAE encode {flops['vae_encode']:.3f}; at the recipe
{cfg.report.steps} x {2 if cfg.report.guidance > 1 else 1} UNet calls + 1 decode = {recipe_gflops:.1f} GFLOP per image.

UNet+text loss curve (step, mean loss): {unet_record['loss_curve']}

## Resolved config

```yaml
{yaml.safe_dump(to_dict(cfg), sort_keys=False)}```
"""


# ---- entry point ---------------------------------------------------------------------------------


def run(cfg: WorldConfig, config_path: str | None) -> int:
    device = torch.device(resolve_device(cfg.device, "world.device"))
    deadline = Deadline(cfg.time_limit_s)
    print(f"make base: stages {cfg.stages} on {hardware_name(device)}")
    if "vae" in cfg.stages and not train_vae(cfg, device, deadline):
        return 0
    if "unet" in cfg.stages and not train_unet(cfg, device, deadline, config_path):
        return 0
    if "clip" in cfg.stages:
        # cycle: synthetic_world.clip_model imports sample_pool from this module
        from synthetic_world.clip_model import train_clip

        train_clip(cfg, device, deadline)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/base.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the world: section")
    args = parser.parse_args(argv)
    return run_main(lambda: run(load_stage_config(WorldConfig, args.config, "world", args.overrides), args.config))


if __name__ == "__main__":
    sys.exit(main())
