"""The synthetic world's small open_clip model: config, contrastive training, retrieval check, loading.

The model is an ordinary open_clip ``CLIP`` built from a JSON model config (tiny ViT for 64 px renders,
small text tower with open_clip's own BPE tokenizer, which ships in the wheel and works offline).
It is saved as ``<dir>/<name>.json`` + ``<dir>/<name>.safetensors`` (fp16) and loaded exactly like a
real local checkpoint: ``open_clip.add_model_config`` + ``create_model_and_transforms(name, pretrained=file)``
(see ``core.clip.load_clip``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from core.clip import ClipBundle, encode_images, encode_texts
from core.clip import load_clip as _core_load_clip
from core.io import atomic_directory, atomic_write_text
from synthetic_world.renderer import render, render_tensor
from synthetic_world.train_base import sample_pool
from synthetic_world.training_utils import (
    Deadline,
    autocast,
    hardware_name,
    load_checkpoint,
    save_checkpoint,
    warmup_cosine,
)
from synthetic_world.world_config import ClipArch, WorldConfig

OPENCLIP_VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer (BPE) vocabulary


def model_config(arch: ClipArch) -> dict:
    """open_clip JSON model config (same schema as open_clip's bundled ViT-L-14.json)."""
    return {
        "embed_dim": arch.embed_dim,
        "vision_cfg": {
            "image_size": 64,
            "layers": arch.vision_layers,
            "width": arch.vision_width,
            "head_width": 32,
            "patch_size": arch.patch_size,
        },
        "text_cfg": {
            "context_length": arch.context_length,
            "vocab_size": OPENCLIP_VOCAB_SIZE,
            "width": arch.text_width,
            "heads": arch.text_heads,
            "layers": arch.text_layers,
        },
    }


def build_model(arch: ClipArch, device: torch.device):
    """A fresh (random) open_clip model from the config, with its tokenizer and normalisation."""
    with tempfile.TemporaryDirectory() as tmp:  # open_clip registers configs from files
        config_file = Path(tmp) / f"{arch.model_name}.json"
        config_file.write_text(json.dumps(model_config(arch), indent=2))
        open_clip.add_model_config(config_file)
    model = open_clip.create_model(arch.model_name, device=device)
    tokenizer = open_clip.get_tokenizer(arch.model_name)
    return model, tokenizer


def normalise(model, images01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (N, 3, 64, 64) -> the model's input normalisation (what preprocess does)."""
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"], device=images01.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=images01.device).view(1, 3, 1, 1)
    return (images01 - mean) / std


def contrastive_loss(model, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (Radford et al. 2021, eq. in Fig. 3)."""
    image = F.normalize(model.encode_image(pixels), dim=-1)
    text = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * image @ text.t()
    targets = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def retrieval_accuracy(bundle: ClipBundle, captions: list[str], images: list[np.ndarray], candidates: int) -> dict:
    """Top-1 accuracy of image->caption and caption->image retrieval within blocks of ``candidates``."""
    img = encode_images(bundle, images)
    txt = encode_texts(bundle, captions)
    i2t, t2i, blocks = 0.0, 0.0, 0
    for start in range(0, len(captions) - candidates + 1, candidates):
        sim = img[start : start + candidates] @ txt[start : start + candidates].t()
        truth = torch.arange(candidates)
        i2t += (sim.argmax(dim=1) == truth).float().mean().item()
        t2i += (sim.argmax(dim=0) == truth).float().mean().item()
        blocks += 1
    return {
        "candidates": candidates,
        "blocks": blocks,
        "image_to_caption_top1": i2t / blocks,
        "caption_to_image_top1": t2i / blocks,
        "chance": 1.0 / candidates,
    }


def train_clip(cfg: WorldConfig, device: torch.device, deadline: Deadline) -> bool:
    """Train (or resume) the CLIP on renders + captions; save to ``cfg.clip_dir`` with a README."""
    tc, arch = cfg.clip_training, cfg.clip
    work = Path(cfg.work_dir) / "clip"
    torch.manual_seed(cfg.seed + 3)
    model, tokenizer = build_model(arch, device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(tc.warmup_steps, tc.steps))
    meta = load_checkpoint(work, {"clip": model}, optimizer, {}) or {"step": 0, "wall_s": 0.0}
    step, wall_before = meta["step"], meta["wall_s"]
    schedule.last_epoch = step - 1
    captions, scenes = sample_pool(tc.pool_size, cfg.seed + 4)
    tokens = tokenizer(captions).to(device)
    gen = torch.Generator().manual_seed(cfg.seed + 20_000 + step)
    start = time.monotonic()
    bar = tqdm(total=tc.steps, initial=step, desc="clip", mininterval=5)
    while step < tc.steps:
        idx = torch.randint(len(scenes), (tc.batch_size,), generator=gen)
        with torch.no_grad():
            pixels = normalise(model, render_tensor([scenes[i] for i in idx.tolist()], device))
        with autocast(device):
            loss = contrastive_loss(model, pixels, tokens[idx.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # CLIP's clamp of the learned temperature (logit scale <= 100)
            model.logit_scale.clamp_(0, np.log(100))
        step += 1
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if deadline.passed() and step < tc.steps:
            save_checkpoint(work, step, {"clip": model}, optimizer, {}, {"wall_s": wall_before + time.monotonic() - start})
            print(f"clip: time limit reached at step {step}/{tc.steps}; checkpoint in {work}; rerun to resume")
            return False
    bar.close()
    wall = wall_before + time.monotonic() - start
    save_clip(model.eval(), arch, cfg, device, wall, final_loss=loss.item())
    return True


def save_clip(model, arch: ClipArch, cfg: WorldConfig, device: torch.device, wall_s: float, final_loss: float) -> None:
    """Write config + fp16 safetensors, reload them the way users do, measure retrieval, write README."""
    with atomic_directory(cfg.clip_dir, overwrite=True) as tmp:
        (tmp / f"{arch.model_name}.json").write_text(json.dumps(model_config(arch), indent=2))
        state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / f"{arch.model_name}.safetensors"))
        bundle = _core_load_clip(tmp, device=str(device))
        captions, scenes = sample_pool(1000, cfg.seed + 99)  # held out: a seed no training pool uses
        images = list(render(scenes))
        metrics = retrieval_accuracy(bundle, captions, images, cfg.clip_training.eval_candidates)
        atomic_write_text(tmp / "README.md", clip_card(arch, cfg, metrics, wall_s, final_loss, hardware_name(device)))
        (tmp / "retrieval.json").write_text(json.dumps(metrics, indent=2))
    print(f"clip: saved to {cfg.clip_dir}; retrieval {metrics}")


def clip_card(arch: ClipArch, cfg: WorldConfig, metrics: dict, wall_s: float, final_loss: float, hardware: str) -> str:
    return f"""# synthetic-clip

A small open_clip model trained contrastively on the synthetic world's renders and captions by
`make base` (stage `clip`), seed {cfg.seed}, {cfg.clip_training.steps} steps at batch
{cfg.clip_training.batch_size}, {wall_s:.0f} s on {hardware}; final loss {final_loss:.3f}.

Architecture (`{arch.model_name}.json`): ViT image tower ({arch.vision_layers} layers, width {arch.vision_width},
patch {arch.patch_size}, 64 px), text tower ({arch.text_layers} layers, width {arch.text_width}, context
{arch.context_length}) with open_clip's own BPE tokenizer, embedding dim {arch.embed_dim}. Weights are fp16
safetensors. Load it as any local open_clip checkpoint:

```python
import open_clip
open_clip.add_model_config("models/synthetic-clip/{arch.model_name}.json")
model, _, preprocess = open_clip.create_model_and_transforms(
    "{arch.model_name}", pretrained="models/synthetic-clip/{arch.model_name}.safetensors")
tokenizer = open_clip.get_tokenizer("{arch.model_name}")
```

or `synthetic_world.clip_model.load_clip("models/synthetic-clip")`.

## Retrieval on held-out renders

{metrics['blocks']} blocks of {metrics['candidates']} (image, caption) pairs; chance = {metrics['chance']:.2f}.
Captions often leave attributes out, so several captions of a block can fit an image equally well.

| direction | top-1 accuracy |
|---|---|
| image -> caption | {metrics['image_to_caption_top1']:.3f} |
| caption -> image | {metrics['caption_to_image_top1']:.3f} |
"""


def load_clip(model_dir: str | Path = "models/synthetic-clip", device: str = "cpu"):
    """(model, preprocess, tokenizer) of the committed synthetic CLIP, through open_clip's own calls."""
    bundle = _core_load_clip(model_dir, device=device)
    return bundle.model, bundle.preprocess, bundle.tokenizer
