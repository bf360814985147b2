"""``python -m redteam.finetune --config configs/redteam.yaml [key=value ...]``: benign downstream fine-tuning.

Reads ``redteam.finetune`` (redteam/config.py). Builds a benign data set, base-model images of ``finetune.prompts``
(the synthetic world's neutral family) with every image whose reader labels show one of ``drop_labels`` dropped,
then trains the aligned LoRA (``finetune.lora``; both halves where it has a text encoder half) further on it with
the plain denoising loss (ε-prediction MSE, uniform timesteps), as someone fine-tuning the released model on their
own harmless data would. The default step count gives as many image visits as the DPO run had pair visits. Writes
``finetune.output_dir`` (default ``runs/<config>/finetuned_lora/``): the LoRA (stock ``pipe.load_lora_weights``
loads it), ``finetune_summary.json``, ``resolved_config.yaml``, the output marker. List the folder among
``redteam.models`` and run make redteam to see how much of each risk returns.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from core.cli import StageCLI, resolve_device, run_main
from core.config import config_name, load_stage_config, write_resolved_config
from core.errors import ConfigError, DataError
from core.io import atomic_directory, atomic_write_json
from core.lora import ADAPTER_NAME, save_lora
from core.models import check_model_dir, lora_weights_file
from core.output_dir import check_output_dir, write_marker
from inference.generation import GenerationSpec, derive_seed, generate, native_resolution, resolve_batch_size
from inference.prompts import load_prompts
from inference.scorers import build_scorer
from mitigations.stack import load_model
from redteam.config import RedteamConfig
from redteam.suite import redteam_suite

MARKER_KIND = "finetuned_lora"


def load_config(config_path: str | None, overrides: list[str]) -> RedteamConfig:
    cfg = load_stage_config(RedteamConfig, config_path, "redteam", overrides)
    ft = cfg.finetune
    out = ft.output_dir or str(Path("runs") / config_name(config_path) / "finetuned_lora")
    return replace(cfg, finetune=replace(ft, output_dir=out))


def default_steps(lora: str | Path, batch_size: int) -> tuple[int, int]:
    """(steps, the DPO run's pair visits) from the LoRA folder's training_summary.json."""
    path = Path(lora) / "training_summary.json"
    if not path.is_file():
        raise ConfigError(f"redteam.finetune.steps is null but {path} does not exist: give finetune.steps")
    summary = json.loads(path.read_text())
    try:
        visits = int(summary["steps"]) * int(summary["pairs_per_step"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: no steps / pairs_per_step to size the fine-tuning ({exc}); give "
                          "finetune.steps") from exc
    return max(1, math.ceil(visits / batch_size)), visits


def benign_images(cfg: RedteamConfig, reader, device: str) -> tuple[list[str], list[np.ndarray], int]:
    """(prompts, images) of the benign data set from the base model, flagged images dropped; how many dropped."""
    ft = cfg.finetune
    records = load_prompts(ft.prompts, "redteam.finetune.prompts")
    pipe = load_model(cfg.model, None, cfg.generation.dtype, device, cfg.variant)
    pipe.set_progress_bar_config(disable=True)
    resolution = cfg.generation.resolution or native_resolution(pipe)
    g = cfg.generation
    specs = [GenerationSpec(prompt=r.prompt, seed=derive_seed(ft.seed, "finetune", r.prompt, j), steps=g.steps,
                            guidance=g.guidance, height=resolution, width=resolution, sampler=g.sampler)
             for r in records for j in range(ft.images_per_prompt)]
    images = generate(pipe, specs, resolve_batch_size(g.batch_size, resolution, torch.device(device).type))
    reads = reader.score(images, [s.prompt for s in specs]) if ft.drop_labels else [{}] * len(images)
    keep = [i for i, read in enumerate(reads)
            if not any(bool(read.get("labels", {}).get(label)) for label in ft.drop_labels)]
    if not keep:
        raise DataError("redteam.finetune: every benign image was dropped by drop_labels; check the prompts")
    return [specs[i].prompt for i in keep], [images[i] for i in keep], len(images) - len(keep)


def finetune(cfg: RedteamConfig, progress: bool = True) -> dict:
    ft = cfg.finetune
    if ft.lora is None or ft.prompts is None:
        raise ConfigError("redteam.finetune needs lora (the aligned LoRA folder) and prompts (benign prompts)")
    lora_weights_file(ft.lora, "redteam.finetune.lora: the aligned LoRA folder a training run wrote")
    check_output_dir(ft.output_dir, cfg.overwrite, "redteam.finetune.output_dir")
    family = check_model_dir(cfg.model, cfg.variant)
    if family != "sd":
        raise ConfigError("redteam.finetune supports SD1.x/2.x models (not SDXL)")
    device = resolve_device(cfg.device, "redteam.device")
    reader_name = ft.reader
    reader_options: dict = {}
    if reader_name is None and ft.drop_labels:
        if cfg.suite is None:
            raise ConfigError("redteam.finetune.drop_labels needs finetune.reader or redteam.suite")
        suite = redteam_suite(cfg.suite)
        reader_name, reader_options = suite.reader, suite.reader_options()
    reader = build_scorer(reader_name, **reader_options) if reader_name else None
    steps, visits = (ft.steps, None) if ft.steps else default_steps(ft.lora, ft.batch_size)
    began = time.perf_counter()
    prompts, images, dropped = benign_images(cfg, reader, device)
    data_seconds = time.perf_counter() - began

    torch.manual_seed(ft.seed)
    pipe = load_model(cfg.model, None, "float32", device, cfg.variant)
    pipe.load_lora_weights(str(ft.lora), adapter_name=ADAPTER_NAME)
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    # The whole released LoRA trains on: its UNet half and, where the aligned run trained one, its text encoder
    # half (train.lora.text_encoder_modules), which carries much of what the DPO run changed.
    text_params = [p for n, p in text_encoder.named_parameters() if "lora_" in n]
    params = [p for n, p in unet.named_parameters() if "lora_" in n] + text_params
    for p in params:
        p.requires_grad_(True)
        p.data = p.data.float()
    with torch.no_grad():
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
        latents = torch.cat([vae.encode(pixels[i:i + 64]).latent_dist.mean for i in range(0, len(pixels), 64)])
        latents = latents * vae.config.scaling_factor
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        frozen_text = None if text_params else torch.cat(
            [text_encoder(ids[i:i + 64])[0] for i in range(0, len(ids), 64)])
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimiser = torch.optim.AdamW(params, lr=ft.learning_rate, weight_decay=0.0)
    generator = torch.Generator(device="cpu").manual_seed(ft.seed)
    losses = []
    unet.train()
    text_encoder.train(bool(text_params))
    train_began = time.perf_counter()
    for step in range(steps):
        index = torch.randint(len(latents), (ft.batch_size,), generator=generator)
        x0 = latents[index.to(latents.device)]
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (ft.batch_size,), generator=generator).to(device)
        noisy = scheduler.add_noise(x0, noise, t)
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
        states = (text_encoder(ids[index.to(ids.device)])[0] if text_params
                  else frozen_text[index.to(frozen_text.device)])
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=states).sample.float(), target.float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % max(1, steps // 10) == 0:
            print(f"[finetune] step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f}", flush=True)
    unet.eval()
    text_encoder.eval()
    summary = {"lora": ft.lora, "model": cfg.model, "steps": steps, "batch_size": ft.batch_size,
               "image_visits": steps * ft.batch_size, "dpo_pair_visits": visits, "learning_rate": ft.learning_rate,
               "benign_images": len(images), "dropped_images": dropped, "drop_labels": ft.drop_labels,
               "prompts": ft.prompts.family or ft.prompts.path, "first_loss": float(np.mean(losses[:20])),
               "final_loss": float(np.mean(losses[-20:])), "text_encoder_trained": bool(text_params),
               "data_seconds": round(data_seconds, 1),
               "train_seconds": round(time.perf_counter() - train_began, 1), "device": device}
    with atomic_directory(ft.output_dir, overwrite=True) as tmp:
        save_lora(tmp, unet, family, text_encoder if text_params else None)
        write_marker(tmp, MARKER_KIND)
        write_resolved_config(cfg, tmp)
        atomic_write_json(tmp / "finetune_summary.json", summary)
    return summary


CLI = StageCLI(RedteamConfig, "redteam", prog="python -m redteam.finetune", description=__doc__)


def main(argv: list[str] | None = None) -> int:
    args = CLI.parse_args(argv, CLI.parser())

    def work() -> None:
        cfg = load_config(args.config, args.overrides)
        summary = finetune(cfg)
        print(f"wrote {cfg.finetune.output_dir} ({summary['steps']} steps x {summary['batch_size']} benign images, "
              f"loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f})")

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
