"""At which noise level does a model decide an attribute? (evidence for ``train.timestep_range_per_risk``)

Takes a curated set's preferred images of one risk (for stereotypes: a figure of a non-stereotyped group,
drawn for a role prompt that names no group), noises each to strength s (img2img: t ≈ s × 1000) and
denoises it with the same prompt and sampler; the oracle then reads the attribute. Where the attribute of
the preferred image survives, it was already fixed at that noise level; where it flips back to the
rejected image's value, the model decides it there.

    python -m synthetic_world.decision_timesteps --set runs/demo/preference_set --risk stereotype

Measured on the committed model (docs/training.md, "Timestep ranges"): the group survives 100% from
strength 0.2, 88% from 0.4, 65% from 0.6, 15% from 0.8 and 2% from 1.0.
"""

from __future__ import annotations

import argparse
import io

import numpy as np

STRENGTHS = (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def preferred_and_rejected(rows: list[dict]):
    """(preferred, rejected) PIL images of preference-set rows (label_0 = 1: image 0 preferred)."""
    from PIL import Image

    def image(data: bytes):
        return Image.open(io.BytesIO(data)).convert("RGB")

    preferred = [image(r["jpg_0"] if r["label_0"] == 1 else r["jpg_1"]) for r in rows]
    rejected = [image(r["jpg_1"] if r["label_0"] == 1 else r["jpg_0"]) for r in rows]
    return preferred, rejected


def survival(after: list[str], preferred: list[str], rejected: list[str]) -> tuple[float, float]:
    """Fractions of images whose attribute stayed the preferred value, and that flipped to the rejected one."""
    kept = float(np.mean([a == p for a, p in zip(after, preferred)]))
    flipped = float(np.mean([a == r for a, r in zip(after, rejected)]))
    return kept, flipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="runs/demo/preference_set")
    parser.add_argument("--risk", default="stereotype")
    parser.add_argument("--attribute", default="group", help="the oracle's read to compare")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--model", default="models/synthetic-sd")
    parser.add_argument("--oracle", default="models/synthetic-oracle")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--sampler", default="dpmsolver")
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from core.models import load_pipeline
    from inference.generation import set_sampler
    from preference_sets.io import iter_rows
    from synthetic_world.oracle import Oracle

    # The project's reader: checks the shards' schema and names an unreadable shard.
    data = [r for r in iter_rows(args.set, columns=["risk", "caption", "jpg_0", "jpg_1", "label_0"])
            if r["risk"] == args.risk]
    rows = data[:: max(1, len(data) // args.pairs)][: args.pairs]
    preferred, rejected = preferred_and_rejected(rows)
    oracle = Oracle.load(args.oracle)

    def read(images):
        return [r[args.attribute] for r in oracle.read([np.asarray(im) for im in images])]

    preferred_values, rejected_values = read(preferred), read(rejected)
    pipe = StableDiffusionImg2ImgPipeline(**load_pipeline(args.model).components)
    set_sampler(pipe, args.sampler)
    prompts = [r["caption"] for r in rows]
    print(f"{len(rows)} {args.risk} pairs of {args.set}; {args.attribute} read by the oracle")
    for strength in STRENGTHS:
        generators = [torch.Generator().manual_seed(i) for i in range(len(rows))]
        out = pipe(prompt=prompts, image=preferred, strength=strength, num_inference_steps=args.steps,
                   guidance_scale=args.guidance, generator=generators, output_type="np").images
        images = [(np.clip(o, 0, 1) * 255).round().astype(np.uint8) for o in out]
        kept, flipped = survival(read(images), preferred_values, rejected_values)
        print(f"strength {strength:.1f} (t ≈ {int(strength * 1000)}): preferred {args.attribute} kept {kept:.2f}, "
              f"back to the rejected one {flipped:.2f}", flush=True)


if __name__ == "__main__":
    main()
