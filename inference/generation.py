"""The shared generation engine: batched, seeded per image, resumable, split across processes.

Used by curation, evaluation and the benchmarks. Every image is a pure function of a
:class:`GenerationSpec` plus the model (and optional adapter) it was drawn from, so its content key
``spec.key(model_id, adapter_id)`` names it everywhere: the :class:`ImageStore` saves ``<key>.png``
and a restarted run skips what is already there.

Works with any local diffusers SD1.x/2.x or SDXL folder loaded by ``core.models.load_pipeline``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import diffusers
import numpy as np
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from core.errors import ConfigError, DataError
from core.images import decode_image, encode_png
from core.io import atomic_write_bytes, stable_key
from core.models import model_fingerprint  # noqa: F401 - re-exported: evals/ imports it from here
from inference.speedups import is_compiled

# Sampler name -> diffusers scheduler class name. Each is built with ``from_config`` from the
# checkpoint's own scheduler config, so the noise schedule (betas, prediction type) is kept.
SAMPLERS = {
    "ddim": "DDIMScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "ddpm": "DDPMScheduler",
}


def _launch_state():
    """accelerate's process state (rank, world size, device) of the launch.

    Without CUDA, or with ``ACCELERATE_USE_CPU=1``, processes started by ``accelerate launch`` (or
    torchrun) join a gloo CPU process group; PartialState only does so when told ``cpu=True``.
    """
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    return PartialState(cpu=use_cpu)


class SoloState:
    """A one-process view of a launched process: it does every batch itself and waits for nobody.

    Inside :func:`solo_process`, ``process_state()`` returns this, so the generation and scoring calls
    (``ImageStore.generate_missing``, ``Workspace.score``) run exactly as in a one-process run, whatever
    the launch's world size. Curation uses it to give whole tasks (risks) to processes
    (data_curation/curate.py, ``process_split: tasks``).
    """

    num_processes = 1
    process_index = 0
    is_main_process = True

    def __init__(self, device):
        self.device = device

    def wait_for_everyone(self) -> None:
        pass

    @contextmanager
    def split_between_processes(self, inputs):
        yield inputs


_solo_depth = 0  # > 0 inside solo_process()


@contextmanager
def solo_process():
    """Run the enclosed generation and scoring as if this were the only process (see :class:`SoloState`)."""
    global _solo_depth
    _solo_depth += 1
    try:
        yield
    finally:
        _solo_depth -= 1


def process_state():
    """The process state that generation and scoring split their work by: accelerate's (rank, world
    size, device) for this run, or a :class:`SoloState` inside :func:`solo_process`."""
    state = _launch_state()
    return SoloState(state.device) if _solo_depth else state


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; valid samplers: {sorted(SAMPLERS)}")
    return name


@dataclass(frozen=True)
class GenerationSpec:
    """Everything that determines one image (together with the model and adapter)."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 5.0
    height: int = 64  # pixels
    width: int = 64  # pixels
    sampler: str = "ddim"

    def key(self, model_id: str, adapter_id: str | None = None) -> str:
        """Content key of the image: same spec + same model weights -> same key, always."""
        return stable_key("image-v1", model_id, adapter_id or "", dataclasses.asdict(self))

    def batch_signature(self) -> tuple:
        """Specs that share this signature can run in one pipeline call."""
        return (self.steps, self.guidance, self.height, self.width, self.sampler)

    def to_json(self) -> dict:
        """The generation settings recorded next to each image (``generation`` column)."""
        return {
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
        }


def derive_seed(*parts) -> int:
    """A deterministic 31-bit seed from any JSON-able parts (e.g. base seed, prompt, index)."""
    return int(stable_key("seed", *parts)[:8], 16) & 0x7FFFFFFF


# batch_size: auto. A GPU gets as many images per batch as fit a budget of pixels (the synthetic model is
# launch-bound below a few hundred 64-px images; SD1.5 at 512 px gets 16, SDXL at 1024 px 4: the plain
# pipeline's benchmark batches, docs/performance.md). A CPU gets at most 32: no faster at 64 (measured
# on the demo model), and a run split over 2 CPU processes then has batches to spare for balance.
AUTO_BATCH_PIXELS_GPU = 2**22
AUTO_BATCH_MAX = {"cuda": 256, "cpu": 32}


def resolve_batch_size(batch_size: int | str, resolution: int, device_type: str) -> int:
    """``batch_size`` as a number of images: itself, or for "auto" the rule above."""
    if batch_size != "auto":
        return int(batch_size)
    by_pixels = max(1, AUTO_BATCH_PIXELS_GPU // (resolution * resolution))
    return min(by_pixels, AUTO_BATCH_MAX.get(device_type, AUTO_BATCH_MAX["cpu"]))


def native_resolution(pipe) -> int:
    """The model's default image side in pixels (UNet sample size x VAE downsampling factor)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def latent_defaults(cls, config: dict) -> dict:
    """Settings a latent-diffusion checkpoint implies but a foreign scheduler config may not state.

    DDIM/DDPM default to ``clip_sample=True`` (clip predicted x0 to [-1, 1]: right for pixel models,
    wrong for latents, whose range is wider) and DDIM to ``set_alpha_to_one=True``. Stable Diffusion's
    own DDIM/PNDM configs set both to False; keep that when switching from e.g. a DPM-Solver config.
    """
    accepted = inspect.signature(cls.__init__).parameters
    return {
        key: False
        for key in ("clip_sample", "set_alpha_to_one")
        if key in accepted and key not in config
    }


def set_sampler(pipe, name: str) -> None:
    """Switch ``pipe.scheduler`` to sampler ``name``, built from the checkpoint's scheduler config."""
    check_sampler(name)
    if getattr(pipe, "_sampler_name", None) == name:
        return
    if not hasattr(pipe, "_original_scheduler_config"):
        pipe._original_scheduler_config = dict(pipe.scheduler.config)
    cls = getattr(diffusers, SAMPLERS[name])
    pipe.scheduler = cls.from_config(pipe._original_scheduler_config, **latent_defaults(cls, pipe._original_scheduler_config))
    pipe._sampler_name = name


def _execution_device(pipe):
    device = getattr(pipe, "_execution_device", None) or pipe.device
    return torch.device(device)


def make_batches(specs: list[GenerationSpec], batch_size: int) -> list[list[int]]:
    """Split spec indices into batches of equal signature, in a fixed order.

    Batch composition depends only on the spec list and batch size (never on what is already done
    or on the number of processes), so a resumed or multi-process run computes every image in
    exactly the batch an uninterrupted single-process run would.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    by_signature: dict[tuple, list[int]] = {}
    for index, spec in enumerate(specs):
        by_signature.setdefault(spec.batch_signature(), []).append(index)
    batches = []
    for indices in by_signature.values():
        batches += [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return batches


def batch_rows(pipe, batch_size: int) -> int | None:
    """The fixed row count every pipeline call of ``pipe`` should run at, or None for "as many as the batch
    holds". A pipeline compiled by ``inference.speedups`` has static-shape graphs: a short batch (the last one of
    a call, a retry of a few images) would trigger a whole new compile, which costs far more than running
    the missing rows, so short batches are padded to ``batch_size``."""
    return batch_size if is_compiled(pipe) else None


def _run_batch(pipe, specs: list[GenerationSpec], pad_to: int | None = None) -> list[np.ndarray]:
    """One pipeline call for specs of one signature -> uint8 images (H, W, 3), one per spec.

    ``pad_to``: run the call at this many rows, filling with copies of the last spec whose images are
    dropped. Each image depends only on its own seed and prompt (one generator per row, rows never mix), so
    padding changes the other images only by the batch-size dependence of the kernels (bf16 rounding)."""
    first = specs[0]
    rows = list(specs) + [specs[-1]] * max(0, (pad_to or 0) - len(specs))
    set_sampler(pipe, first.sampler)
    device = _execution_device(pipe)
    # One generator per image: diffusers draws each image's initial latent from its own generator,
    # so the noise of an image depends on its seed only, not on its batch neighbours.
    generators = [torch.Generator(device=device).manual_seed(int(s.seed)) for s in rows]
    with torch.no_grad():
        output = pipe(
            prompt=[s.prompt for s in rows],
            negative_prompt=[s.negative_prompt for s in rows],
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            height=first.height,
            width=first.width,
            generator=generators,
            output_type="pt",
        )
    return list(to_uint8_images(output.images[: len(specs)]))


def to_uint8_images(images) -> np.ndarray:
    """Decoded images, float (N, 3, H, W) in [0, 1] on the pipeline's device -> uint8 (N, H, W, 3) on the host.

    The same numbers as diffusers' ``output_type="np"`` followed by ``numpy_to_pil``'s rounding (fp32, x 255,
    round half to even), but computed where the images are: on a GPU this moves a quarter of the bytes and
    leaves the host's CPU ~50-100 ms per batch of 16 images at 512 px less to do while the GPU waits."""
    with torch.no_grad():
        pixels = (images.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()


def generate(pipe, specs: list[GenerationSpec], batch_size: int = 16, progress: bool = False) -> list[np.ndarray]:
    """Generate one uint8 (H, W, 3) image per spec, in spec order."""
    results: list[np.ndarray | None] = [None] * len(specs)
    batches = make_batches(list(specs), batch_size)
    pad_to = batch_rows(pipe, batch_size)
    with tqdm(total=len(specs), desc="generate", unit="img", disable=not progress) as bar:
        for batch in batches:
            for index, image in zip(batch, _run_batch(pipe, [specs[i] for i in batch], pad_to)):
                results[index] = image
            bar.update(len(batch))
    return results  # type: ignore[return-value]


@dataclass
class GenerationReport:
    requested: int  # specs asked for (unique keys)
    already_present: int  # found in the store (resume)
    generated: int  # generated by this process
    seconds: float  # wall time of this process's generation

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else float("nan")


class ImageStore:
    """Content-addressed PNG store: ``<folder>/<key[:2]>/<key>.png``, written atomically.

    A file exists only once its image is complete, so after a kill the store holds whole images and
    a restarted run regenerates only what is missing.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.png"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, image: np.ndarray) -> None:
        atomic_write_bytes(self.path(key), encode_png(image))

    def get_bytes(self, key: str) -> bytes:
        path = self.path(key)
        if not path.is_file():
            raise DataError(f"image {key} is not in the store {self.folder}")
        return path.read_bytes()

    def get(self, key: str) -> np.ndarray:
        return np.asarray(decode_image(self.get_bytes(key), what=str(self.path(key))), dtype=np.uint8)

    def get_many(self, keys: Iterable[str]) -> list[np.ndarray]:
        return [self.get(k) for k in keys]

    def generate_missing(
        self,
        pipe,
        specs: list[GenerationSpec],
        model_id: str,
        adapter_id: str | None = None,
        batch_size: int = 16,
        progress: bool = True,
        desc: str = "generate",
    ) -> GenerationReport:
        """Generate every spec whose key is not stored yet; return what was done.

        Under ``accelerate launch`` the batches are split across processes with
        ``PartialState().split_between_processes``; every process writes into the same store and all
        wait for each other before returning, so on return every key is present.
        """
        unique: dict[str, GenerationSpec] = {}
        for spec in specs:
            unique.setdefault(spec.key(model_id, adapter_id), spec)
        keys = list(unique)
        ordered = [unique[k] for k in keys]
        batches = make_batches(ordered, batch_size)
        # A batch is skipped only when all of its images exist; a partly done batch is recomputed
        # whole (writing only the missing images) so every image comes from its canonical batch.
        state = process_state()
        # Every process must see the same store when it decides what is left to do (otherwise the
        # split below differs between processes and batches get lost): sync before looking.
        state.wait_for_everyone()
        todo = [b for b in batches if not all(keys[i] in self for i in b)]
        present = sum(1 for k in keys if k in self)
        start = time.perf_counter()
        generated = 0
        pad_to = batch_rows(pipe, batch_size)
        with state.split_between_processes(todo) as my_batches:
            total = sum(len(b) for b in my_batches)
            with tqdm(
                total=total,
                desc=desc if state.num_processes == 1 else f"{desc} [rank {state.process_index}]",
                unit="img",
                disable=not progress,
            ) as bar:
                for batch in my_batches:
                    images = _run_batch(pipe, [ordered[i] for i in batch], pad_to)
                    for index, image in zip(batch, images):
                        if keys[index] not in self:
                            self.put(keys[index], image)
                            generated += 1
                    bar.update(len(batch))
        seconds = time.perf_counter() - start
        state.wait_for_everyone()
        return GenerationReport(requested=len(keys), already_present=present, generated=generated, seconds=seconds)
