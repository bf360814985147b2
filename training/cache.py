"""Where a training batch comes from: the latent/text cache (fast path) or live encoding (simple path).

Both sources return the same :class:`PairBatch` for the same pair indices, so the cached and uncached
paths give the same loss (tested). The cache is one safetensors file, keyed by the VAE/text-encoder
weights, the set's content hash and the resolution, and is written once (atomically) by the main process.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from core.io import atomic_write_bytes, stable_key
from core.models import model_fingerprint
from training.data import PreferencePairs, RetainImages, image_to_uint8, pair_pixels
from training.models import DiffusionComponents, TextConditioning, encode_images, encode_prompts, sdxl_time_ids

CACHE_FORMAT = "dpo-pair-cache-v1"


@dataclass
class PairBatch:
    latents_w: torch.Tensor  # (B, C, h, w) preferred image latents
    latents_l: torch.Tensor  # (B, C, h, w) rejected image latents
    prompt_embeds: torch.Tensor  # (B, L, D) the frozen encoder's states: the reference's, and the policy's too
    pooled_embeds: torch.Tensor | None  # (B, D2), SDXL
    time_ids: torch.Tensor | None  # (B, 6), SDXL
    # (B, L) int64 caption token ids (the empty caption's where the prompt is dropped), given when the text encoder
    # is trained (training/text_lora.py): the policy then encodes them itself.
    input_ids: torch.Tensor | None = None
    trains_text: torch.Tensor | None = None  # (B,) bool, with input_ids: rows whose policy reads the trained encoder


@dataclass
class CaptionTokens:
    """Token ids of each item's caption, for a trained text encoder: ``ids`` (N, L) int64, ``empty`` (L,) the
    empty caption's (prompt dropout), ``trains_text`` (N,) bool: whether the item's policy forward reads the
    trained encoder's states (``train.lora.text_encoder_risks``) rather than the frozen ones."""

    ids: torch.Tensor
    empty: torch.Tensor
    trains_text: torch.Tensor

    def to(self, device) -> "CaptionTokens":
        return CaptionTokens(self.ids.to(device), self.empty.to(device), self.trains_text.to(device))

    def gather(self, indices: torch.Tensor, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (B, L), trains_text (B,)) of items ``indices`` (on the ids' device); the ids are the empty
        caption's where ``drop`` (B,) is True."""
        ids = self.ids[indices]
        if drop is not None:
            ids = torch.where(drop.to(ids.device).view(-1, 1), self.empty.view(1, -1), ids)
        return ids, self.trains_text[indices]


def apply_prompt_dropout(cond: TextConditioning, empty: TextConditioning, drop: torch.Tensor) -> TextConditioning:
    """Replace the conditioning of pairs where ``drop`` (B,) is True by the empty caption's."""
    prompt = torch.where(drop.view(-1, 1, 1), empty.prompt_embeds.expand_as(cond.prompt_embeds), cond.prompt_embeds)
    pooled = cond.pooled_embeds
    if pooled is not None:
        pooled = torch.where(drop.view(-1, 1), empty.pooled_embeds.expand_as(pooled), pooled)
    return TextConditioning(prompt, pooled)


def _time_ids(components: DiffusionComponents, batch: int, device) -> torch.Tensor | None:
    """SDXL micro-conditioning for ``batch`` images (None for SD1.x/2.x)."""
    return sdxl_time_ids(components.resolution, batch, device) if components.family == "sdxl" else None


def _make_batch(components: DiffusionComponents, latents_w, latents_l, cond: TextConditioning,
                text: tuple[torch.Tensor, torch.Tensor] | None = None) -> PairBatch:
    """``text``: (input_ids (B, L), trains_text (B,)) for a trained text encoder."""
    time_ids = _time_ids(components, latents_w.shape[0], latents_w.device)
    return PairBatch(latents_w, latents_l, cond.prompt_embeds, cond.pooled_embeds, time_ids, *(text or ()))


class UncachedPairSource:
    """Decodes images and runs the VAE and text encoder(s) for every batch (the simple/baseline path)."""

    def __init__(self, components: DiffusionComponents, pairs: PreferencePairs, device) -> None:
        self.components, self.pairs, self.device = components, pairs, device
        self.captions = pairs.captions()
        self.empty = encode_prompts(components, [""], device)

    def batch(self, draws) -> PairBatch:
        index_list = draws.cpu_indices.tolist()
        drop = draws.drop_prompt
        winners, losers = pair_pixels(self.pairs, index_list, self.components.resolution)
        latents = encode_images(self.components.vae, torch.cat([winners, losers]).to(self.device))
        latents_w, latents_l = latents.chunk(2)
        cond = encode_prompts(self.components, [self.captions[i] for i in index_list], self.device)
        cond = apply_prompt_dropout(cond, self.empty, drop)
        return _make_batch(self.components, latents_w, latents_l, cond)


def cache_fits_on_device(tensors: dict[str, torch.Tensor], device, fraction: float = 0.25) -> bool:
    """Keep the cache in GPU memory when it takes under ``fraction`` of the free memory (always on CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    free, _ = torch.cuda.mem_get_info(device)
    return size < fraction * free


class CachedPairSource:
    """Gathers precomputed latents and text embeddings: no VAE or text encoder during training.

    The cache lives on the training device when it fits (gathers are then device-side, no host work);
    otherwise in pinned host memory, gathered on the host and copied asynchronously.
    """

    def __init__(self, components: DiffusionComponents, tensors: dict[str, torch.Tensor], device,
                 tokens: CaptionTokens | None = None) -> None:
        self.components, self.device = components, torch.device(device)
        self.on_device = cache_fits_on_device(tensors, device)
        home = self.device if self.on_device else torch.device("cpu")
        self.tensors = {name: t.to(home) for name, t in tensors.items()}
        if not self.on_device:
            self.tensors = {name: t.pin_memory() for name, t in self.tensors.items()}
        self.tokens = tokens.to(self.device) if tokens is not None else None

    def batch(self, draws) -> PairBatch:
        from training.step import to_device_async  # cycle: training.step imports PairBatch from this module

        t = self.tensors
        indices = draws.indices if self.on_device else draws.cpu_indices
        caption = t["caption_index"][indices]
        gathered = {
            "latents_w": t["latents_w"][indices],
            "latents_l": t["latents_l"][indices],
            "prompt_embeds": t["prompt_embeds"][caption],
            "empty_prompt_embeds": t["empty_prompt_embeds"],
        }
        if "pooled_embeds" in t:
            gathered["pooled_embeds"] = t["pooled_embeds"][caption]
            gathered["empty_pooled_embeds"] = t["empty_pooled_embeds"]
        if not self.on_device:
            gathered = {name: to_device_async(value, self.device) for name, value in gathered.items()}
        g = gathered
        cond = TextConditioning(g["prompt_embeds"], g.get("pooled_embeds"))
        empty = TextConditioning(g["empty_prompt_embeds"], g.get("empty_pooled_embeds"))
        cond = apply_prompt_dropout(cond, empty, draws.drop_prompt)
        text = self.tokens.gather(draws.indices, draws.drop_prompt) if self.tokens is not None else None
        return _make_batch(self.components, g["latents_w"], g["latents_l"], cond, text)


def encoder_fingerprint(model_path: str | Path) -> str:
    """Content hash of everything that determines the cache: VAE, text encoders, tokenizers."""
    return model_fingerprint(model_path, subfolders=("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"))


def cache_key(components: DiffusionComponents, pairs: PreferencePairs, precision: str = "fp32") -> str:
    """The latent cache's key; ``precision`` (the VAE's while encoding) enters it only when it is not fp32, so the
    keys of fp32 caches written before it existed are unchanged."""
    parts = [CACHE_FORMAT, encoder_fingerprint(components.model_path), pairs.set_hash, components.resolution,
             pairs.rows.tolist(),  # which pairs (max_pairs) and in which order
             pairs.winner_is_0.tolist()]
    return stable_key(*parts, *([f"vae-{precision}"] if precision != "fp32" else []))


PIXELS_PER_ENCODE_CALL = 4 * 512 * 512


@torch.no_grad()
def encode_captions(
    components: DiffusionComponents, captions: list[str], device, batch_size: int = 32, show_progress: bool = True
) -> dict[str, torch.Tensor]:
    """Deduplicated text conditioning: (U, L, D) ``prompt_embeds`` (+ (U, D2) ``pooled_embeds`` for SDXL),
    an (N,) ``caption_index`` into them, and the empty caption's embeddings (for prompt dropout)."""
    unique = list(dict.fromkeys(captions))
    position = {c: i for i, c in enumerate(unique)}
    prompt_embeds, pooled_embeds = [], []
    for start in tqdm(range(0, len(unique), batch_size), desc="caching text", disable=not show_progress):
        cond = encode_prompts(components, unique[start : start + batch_size], device)
        prompt_embeds.append(cond.prompt_embeds.cpu())
        if cond.pooled_embeds is not None:
            pooled_embeds.append(cond.pooled_embeds.cpu())
    empty = encode_prompts(components, [""], device)
    tensors = {
        "caption_index": torch.tensor([position[c] for c in captions], dtype=torch.int64),
        "prompt_embeds": torch.cat(prompt_embeds),
        "empty_prompt_embeds": empty.prompt_embeds.cpu(),
    }
    if pooled_embeds:
        tensors["pooled_embeds"] = torch.cat(pooled_embeds)
        tensors["empty_pooled_embeds"] = empty.pooled_embeds.cpu()
    return tensors


@torch.no_grad()
def encode_image_batches(components: DiffusionComponents, count: int, pixels_for, images_per_item: int, device,
                         desc: str, show_progress: bool = True) -> torch.Tensor:
    """VAE latents of ``count`` items, ``pixels_for(indices)`` giving their (k·images_per_item, 3, H, W)
    pixels. The VAE's activations grow with pixels: at 1024 px one fp32 image already needs ~GBs per
    activation tensor, so each encode call is bounded to ~4 images of 512 px worth of pixels."""
    per_call = max(1, min(32, PIXELS_PER_ENCODE_CALL // (images_per_item * components.resolution**2)))
    chunks = []
    for start in tqdm(range(0, count, per_call), desc=desc, disable=not show_progress):
        indices = list(range(start, min(start + per_call, count)))
        chunks.append(encode_images(components.vae, pixels_for(indices).to(device)).cpu())
    return torch.cat(chunks)


class _PairImages(torch.utils.data.Dataset):
    """Pair i's (winner, loser) as uint8 (2, 3, H, W), decoded in a DataLoader worker."""

    def __init__(self, pairs: PreferencePairs, resolution: int) -> None:
        self.pairs, self.resolution = pairs, resolution

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> torch.Tensor:
        w, l_ = self.pairs.image_bytes(index)
        row = int(self.pairs.rows[index])
        where = f"{self.pairs.folder}: row {row}"
        return torch.stack([image_to_uint8(w, self.resolution, f"{where} preferred image"),
                            image_to_uint8(l_, self.resolution, f"{where} rejected image")])


# Pixels per VAE call of the batched encoder: 64 images at 512 px (the encoder's activations in bf16 at this size
# take ~20 GiB without gradients; at 1024 px, 16 images).
PIXELS_PER_BATCHED_CALL = 64 * 512 * 512


def _decode_workers() -> int:
    """DataLoader workers for JPEG/PNG decoding: all cores but the one that feeds the GPU, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


@torch.no_grad()
def encode_pair_latents_batched(components: DiffusionComponents, pairs: PreferencePairs, device, precision: str,
                                workers: int | None = None, show_progress: bool = True) -> torch.Tensor:
    """(N, 2, C, h, w) float32 latents of every pair (winner, loser), at GPU speed: DataLoader workers decode the
    images (uint8, pinned) while the GPU encodes the previous batch; the VAE runs as a ``precision`` copy on large
    batches in NCHW, since its GroupNorm + SiLU run about 3x slower on channels_last activations
    (``python -m benchmarks.startup_probe parts=vae``). Pixels are the fp32 path's exactly ((x / 127.5 - 1) in fp32,
    then cast); in fp32 the latents equal encode_image_batches' to float32 rounding, in bf16 to bf16 rounding
    (tests/training)."""
    device = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    encoder = copy.deepcopy(components.vae).to(device=device, dtype=dtype)
    pairs_per_call = max(1, PIXELS_PER_BATCHED_CALL // (2 * components.resolution ** 2))
    workers = _decode_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        _PairImages(pairs, components.resolution), batch_size=pairs_per_call, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"  # the same few conv shapes over and over
    chunks = []
    try:
        for images in tqdm(loader, desc="caching latents", disable=not show_progress):  # (k, 2, 3, H, W) uint8
            pixels = images.to(device, non_blocking=True).flatten(0, 1).float().div(127.5).sub(1.0)
            chunks.append(encode_images(encoder, pixels.to(dtype)).unflatten(0, (-1, 2)))  # float32 on the device
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return torch.cat(chunks).cpu()  # the one host sync of the pass


def build_cache_tensors(
    components: DiffusionComponents, pairs: PreferencePairs, device, batch_size: int = 32, show_progress: bool = True,
    precision: str = "fp32",
) -> dict[str, torch.Tensor]:
    """Encode every pair once. Captions are deduplicated: (U, L, D) embeddings + an (N,) index. On CUDA, or in bf16,
    the images go through :func:`encode_pair_latents_batched`; an fp32 run on a CPU keeps the one-process path."""
    text = encode_captions(components, pairs.captions(), device, batch_size, show_progress)

    def pixels_for(indices: list[int]) -> torch.Tensor:
        winners, losers = pair_pixels(pairs, indices, components.resolution)
        return torch.stack([winners, losers], dim=1).flatten(0, 1)  # (2k, 3, H, W): w_1, l_1, w_2, l_2, ...

    if torch.device(device).type == "cuda" or precision != "fp32":
        latents = encode_pair_latents_batched(components, pairs, device, precision, show_progress=show_progress)
    else:
        latents = encode_image_batches(components, len(pairs), pixels_for, 2, device, "caching latents",
                                       show_progress)
        latents = latents.unflatten(0, (len(pairs), 2))  # (N, 2, C, h, w)
    tensors = {"latents_w": latents[:, 0], "latents_l": latents[:, 1], **text}
    return {k: v.contiguous() for k, v in tensors.items()}


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"pairs-{key}.safetensors"


def load_or_build_cache(
    components: DiffusionComponents, pairs: PreferencePairs, cache_dir: str | Path, device, is_main: bool,
    show_progress: bool = True, precision: str = "fp32",
) -> tuple[dict[str, torch.Tensor], Path]:
    """Main process: build the cache file if missing. Others call this after it exists (main first). ``precision``:
    the VAE's while encoding (``TrainConfig.latent_cache_precision``)."""
    path = cache_path(cache_dir, cache_key(components, pairs, precision))
    build = lambda: build_cache_tensors(components, pairs, device, show_progress=show_progress,  # noqa: E731
                                        precision=precision)
    return _load_or_build(path, build, pairs.set_hash, is_main), path


def _load_or_build(path: Path, build, set_hash: str, is_main: bool) -> dict[str, torch.Tensor]:
    """The cache file at ``path``; the main process builds and writes it (atomically) first if missing."""
    if not path.is_file() and is_main:
        atomic_write_bytes(path, save(build(), metadata={"format": CACHE_FORMAT, "set_hash": set_hash}))
    return load_file(str(path))


def retain_cache_key(components: DiffusionComponents, retain: RetainImages) -> str:
    return stable_key(CACHE_FORMAT, "retain", encoder_fingerprint(components.model_path), retain.set_hash,
                      components.resolution)


def load_or_build_retain_cache(
    components: DiffusionComponents, retain: RetainImages, cache_dir: str | Path, device, is_main: bool,
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Retain-set latents (N, C, h, w) and caption embeddings, encoded once (same rules as the pairs)."""
    path = Path(cache_dir) / f"retain-{retain_cache_key(components, retain)}.safetensors"

    def build() -> dict[str, torch.Tensor]:
        text = encode_captions(components, retain.captions(), device, show_progress=show_progress)
        latents = encode_image_batches(
            components, len(retain), lambda idx: retain.pixels(idx, components.resolution), 1, device,
            "caching retain latents", show_progress,
        )
        return {k: v.contiguous() for k, v in {"latents": latents, **text}.items()}

    return _load_or_build(path, build, retain.set_hash, is_main)


@dataclass
class ImageBatch:
    latents: torch.Tensor  # (R, C, h, w)
    prompt_embeds: torch.Tensor  # (R, L, D)
    pooled_embeds: torch.Tensor | None  # (R, D2), SDXL
    time_ids: torch.Tensor | None  # (R, 6), SDXL
    input_ids: torch.Tensor | None = None  # (R, L) caption token ids, for a trained text encoder (as in PairBatch)
    trains_text: torch.Tensor | None = None  # (R,) bool (as in PairBatch)


class CachedRetainSource:
    """Gathers retain-set latents and caption embeddings for the anchoring term (no prompt dropout)."""

    def __init__(self, components: DiffusionComponents, tensors: dict[str, torch.Tensor], device,
                 tokens: CaptionTokens | None = None) -> None:
        self.components, self.device = components, torch.device(device)
        self.tensors = {name: t.to(self.device) for name, t in tensors.items()}
        self.tokens = tokens.to(self.device) if tokens is not None else None

    def __len__(self) -> int:
        return int(self.tensors["latents"].shape[0])

    def batch(self, draws) -> ImageBatch:
        t = self.tensors
        caption = t["caption_index"][draws.indices]
        pooled = t["pooled_embeds"][caption] if "pooled_embeds" in t else None
        text = self.tokens.gather(draws.indices) if self.tokens is not None else ()
        return ImageBatch(t["latents"][draws.indices], t["prompt_embeds"][caption], pooled,
                          _time_ids(self.components, len(caption), self.device), *text)
