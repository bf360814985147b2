"""``python -m erasure.erase --config configs/demo.yaml [key=value ...]``: concept erasure (ESD) as LoRAs.

Reads the ``erase:`` section (erasure/config.py), trains each selected erasure (erasure/esd.py: ESD-x or ESD-u on
the concepts) and writes one folder per erasure, by default ``runs/<config>/<erasure name>/``:
``pytorch_lora_weights.safetensors`` (stock ``pipe.load_lora_weights(folder)`` loads it, like the DPO LoRA),
peft's ``adapter_config.json`` + ``adapter_model.safetensors``, ``erase_summary.json``, ``metrics.jsonl``,
``README.md``, ``resolved_config.yaml`` and the output marker. Each folder is written whole when its erasure
finishes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import yaml
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from core.cli import StageCLI, resolve_device, run_main
from core.config import config_name, load_stage_config, to_dict, write_resolved_config
from core.errors import PipelineError
from core.io import atomic_directory, atomic_write_json, atomic_write_text
from core.lora import add_lora_adapter, save_lora
from core.models import check_model_dir, load_pipeline
from core.output_dir import check_output_dir, write_marker
from erasure.config import EraseConfig, ResolvedErasure, resolve_paths
from erasure.esd import ESDObjective, encode_concepts, esd_target_modules, train_esd

MARKER_KIND = "erasure_lora"


def load_config(config_path: str | None, overrides: list[str]) -> EraseConfig:
    cfg = load_stage_config(EraseConfig, config_path, "erase", overrides)
    return resolve_paths(cfg, config_name(config_path))


def erase(cfg: EraseConfig, progress: bool = True) -> dict[str, dict]:
    """Train every selected erasure of ``cfg`` (paths resolved); return each one's summary by name."""
    selected = list(cfg.selected())
    for name in selected:  # before any work: a folder that may not be replaced stops the run at once
        check_output_dir(cfg.erasures[name].output_dir, cfg.overwrite, f"erase.erasures.{name}.output_dir")
    family = check_model_dir(cfg.model, cfg.variant)
    if cfg.processes > 1 and len(selected) > 1:
        return erase_in_processes(cfg, selected)
    device = resolve_device(cfg.device, "erase.device")
    bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.startswith("cuda"))
    summaries = {}
    for name in selected:
        summaries[name] = erase_one(cfg, cfg.resolved(name), family, device, bf16, progress)
    return summaries


def erase_in_processes(cfg: EraseConfig, names: list[str]) -> dict[str, dict]:
    """Each erasure of ``names`` in its own ``python -m erasure.erase only=[name]`` process, ``cfg.processes`` at a
    time, on this config (paths resolved); each process writes its folder as a sequential run would. Returns each
    one's summary (read from its folder); a process that fails is a PipelineError naming the erasures that did."""
    child = replace(cfg, only=None, processes=1)
    with tempfile.TemporaryDirectory(prefix="erase-") as tmp:
        config_file = Path(tmp) / "erase.yaml"
        atomic_write_text(config_file, yaml.safe_dump({"erase": to_dict(child)}, sort_keys=False))

        def run_one(name: str) -> int:
            command = [sys.executable, "-m", "erasure.erase", "--config", str(config_file), f"only=[{name}]"]
            return subprocess.run(command, check=False).returncode

        with ThreadPoolExecutor(max_workers=cfg.processes) as pool:
            codes = dict(zip(names, pool.map(run_one, names)))
    failed = {name: code for name, code in codes.items() if code != 0}
    if failed:
        raise PipelineError(f"erasure process(es) failed (exit codes {failed}; their errors are above); the other "
                            "erasures' folders are written")
    return {name: json.loads((Path(cfg.erasures[name].output_dir) / "erase_summary.json").read_text())
            for name in names}


def erase_one(cfg: EraseConfig, erasure: ResolvedErasure, family: str, device: str, bf16: bool,
              progress: bool = True) -> dict:
    """One erasure from a freshly loaded base model: LoRA on the method's layers, ESD, the output folder."""

    torch.manual_seed(cfg.seed)  # the LoRA's A init
    pipe = load_pipeline(cfg.model, dtype=torch.bfloat16 if bf16 else torch.float32, device=device,
                         variant=cfg.variant)
    unet = pipe.unet
    resolution = int(unet.config.sample_size) * int(pipe.vae_scale_factor)
    conditioning = encode_concepts(pipe, erasure.concepts, resolution, device)
    del pipe.vae, pipe.text_encoder  # only the UNet trains or predicts from here on
    if family == "sdxl":
        del pipe.text_encoder_2
    targets = esd_target_modules(unet, erasure.method)
    params = add_lora_adapter(unet, rank=cfg.lora.rank, alpha=cfg.lora.scale_alpha, target_modules=targets,
                              setting=f"erase.erasures.{erasure.name}.method")
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    autocast = partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16) if bf16 else nullcontext
    objective = ESDObjective(unet, conditioning, scheduler.alphas_cumprod.to(device),
                             scheduler.config.prediction_type, erasure.eta, cfg.sampling_steps,
                             cfg.sampling_guidance, autocast=autocast)
    latent_shape = (int(unet.config.in_channels), int(unet.config.sample_size), int(unet.config.sample_size))
    with tqdm(total=erasure.iterations, desc=f"erase {erasure.name} (ESD-{erasure.method})", unit="it",
              disable=not progress) as bar:
        def on_log(record: dict) -> None:
            bar.n = record["iteration"]
            bar.set_postfix(loss=f"{record['loss']:.4g}")
            bar.refresh()

        run = train_esd(objective, params, iterations=erasure.iterations, learning_rate=erasure.learning_rate,
                        batch_size=cfg.batch_size, num_concepts=len(erasure.concepts), latent_shape=latent_shape,
                        seed=cfg.seed, max_grad_norm=cfg.max_grad_norm, log_every=cfg.log_every, on_log=on_log)
    summary = {
        "erasure": erasure.name,
        "method": f"ESD-{erasure.method}",
        "model": cfg.model,
        "family": family,
        "concepts": erasure.concepts,
        "eta": erasure.eta,
        "iterations": erasure.iterations,
        "learning_rate": erasure.learning_rate,
        "batch_size": cfg.batch_size,
        "sampling_steps": cfg.sampling_steps,
        "sampling_guidance": cfg.sampling_guidance,
        "lora": {"rank": cfg.lora.rank, "alpha": cfg.lora.scale_alpha, "layers": len(targets)},
        "trainable_parameters": sum(p.numel() for p in params),
        "device": device,
        "mixed_precision": "bf16" if bf16 else "fp32",
        "seconds": round(run["seconds"], 2),
        "cpu_seconds": round(run["cpu_seconds"], 2),
        "torch_threads": torch.get_num_threads(),
        "iterations_per_s": round(run["iterations_per_s"], 3),
        "first_loss": run["first_loss"],
        "final_loss": run["final_loss"],
    }
    _write_output(cfg, erasure, unet, family, summary, run["log"])
    return summary


def _write_output(cfg: EraseConfig, erasure: ResolvedErasure, unet, family: str, summary: dict,
                  log: list[dict]) -> None:
    """All or nothing: the output folder appears complete or not at all."""
    with atomic_directory(erasure.output_dir, overwrite=True) as tmp:
        save_lora(tmp, unet, family)
        write_marker(tmp, MARKER_KIND)
        write_resolved_config(cfg, tmp)
        atomic_write_json(tmp / "erase_summary.json", summary)
        atomic_write_text(tmp / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in log))
        atomic_write_text(tmp / "README.md", model_card(summary))


def model_card(summary: dict) -> str:
    concepts = "\n".join(f"- `{c}`" for c in summary["concepts"])
    return f"""# {summary['erasure']}: {summary['method']} concept erasure LoRA

Erasing Concepts from Diffusion Models (Gandikota et al. 2023) on `{summary['model']}`, trained as a LoRA on
{'the cross-attention layers' if summary['method'] == 'ESD-x' else 'the non-cross-attention layers'}
({summary['lora']['layers']} layers, rank {summary['lora']['rank']}, alpha {summary['lora']['alpha']:g}).

Erased concepts:

{concepts}

η = {summary['eta']:g}, {summary['iterations']} iterations at learning rate {summary['learning_rate']:g},
{summary['batch_size']} image(s) per iteration; x_t sampled from the erased model with {summary['sampling_steps']}
DDIM steps at guidance {summary['sampling_guidance']:g}. Loss {summary['first_loss']:.4g} (first log window) ->
{summary['final_loss']:.4g} (last), {summary['seconds']:.0f} s on {summary['device']}.

```python
pipe.load_lora_weights("<this folder>")  # stock diffusers, like any LoRA
```
"""


CLI = StageCLI(EraseConfig, "erase", prog="python -m erasure.erase", description=__doc__)


def build_parser():
    return CLI.parser()


def main(argv: list[str] | None = None) -> int:
    args = CLI.parse_args(argv, build_parser())

    def work() -> None:
        cfg = load_config(args.config, args.overrides)
        for name, summary in erase(cfg).items():
            print(f"wrote {cfg.erasures[name].output_dir} ({summary['method']}, {summary['iterations']} iterations "
                  f"in {summary['seconds']:.0f} s, loss {summary['first_loss']:.4g} -> {summary['final_loss']:.4g})")

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
