"""ESD mechanics on the tiny random SD1.5/SDXL models: the objective against a hand computation, which layers each
method adapts, where x_t and the targets come from, the saved LoRA under stock ``load_lora_weights``, bad
configs."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from core.lora import add_lora_adapter, lora_layers
from core.models import LORA_WEIGHT_NAME, load_pipeline
from core.output_dir import MARKER
from erasure.erase import main
from erasure.esd import (
    ESDObjective,
    draw,
    encode_concepts,
    esd_loss,
    esd_target,
    esd_target_modules,
    trajectory,
)


def test_target_and_loss_match_a_hand_computation():
    eps_uncond = torch.tensor([[1.0, 2.0, -1.0]])
    eps_concept = torch.tensor([[3.0, 1.0, -1.0]])
    # η = 1: u - (c - u) = 2u - c
    assert esd_target(eps_uncond, eps_concept, 1.0).tolist() == [[-1.0, 3.0, -1.0]]
    # η = 2: u - 2(c - u) = 3u - 2c
    assert esd_target(eps_uncond, eps_concept, 2.0).tolist() == [[-3.0, 4.0, -1.0]]
    eps_erased = torch.tensor([[0.0, 0.0, 0.0]])
    # squared errors against η = 1's target: 1, 9, 1 -> mean 11/3
    assert esd_loss(eps_erased, eps_uncond, eps_concept, 1.0).item() == pytest.approx(11.0 / 3.0)
    # the erased model predicting the target exactly has zero loss
    assert esd_loss(esd_target(eps_uncond, eps_concept, 1.0), eps_uncond, eps_concept, 1.0).item() == 0.0


def test_trajectory_ends_at_the_drawn_timestep():
    assert trajectory(1000, 999, 50) == [999]
    steps = trajectory(1000, 0, 50)
    assert steps[0] == 999 and steps[-1] == 0 and len(steps) == 51
    steps = trajectory(1000, 500, 20)
    assert steps[0] == 999 and steps[-1] == 500 and len(steps) == 11  # 499 timesteps at ~50 per step
    assert all(a > b for a, b in zip(steps, steps[1:]))


def _adapted(model_path, method):
    pipe = load_pipeline(model_path)
    names = esd_target_modules(pipe.unet, method)
    add_lora_adapter(pipe.unet, rank=2, alpha=2.0, target_modules=names)
    return pipe, names


def test_esd_x_adapts_only_cross_attention_and_esd_u_none_of_it(tiny_sd15_path):
    pipe, names = _adapted(tiny_sd15_path, "x")
    layers = {name for name, module in pipe.unet.named_modules() if module in lora_layers(pipe.unet)}
    assert layers == set(names) and layers
    assert all("attn2" in name.split(".") for name in layers)
    assert {n.split("attn2.", 1)[1] for n in layers} == {"to_q", "to_k", "to_v", "to_out.0"}
    trainable = [n for n, p in pipe.unet.named_parameters() if p.requires_grad]
    assert trainable and all("attn2" in n and "lora_" in n for n in trainable)

    pipe, names = _adapted(tiny_sd15_path, "u")
    trainable = [n for n, p in pipe.unet.named_parameters() if p.requires_grad]
    assert trainable and not any("attn2" in n for n in trainable)
    assert all("lora_" in n for n in trainable)
    assert not any(n.startswith(("time_embedding", "conv_out")) for n in names)
    # every other linear and convolution layer is adapted: self-attention, feed-forward, resnets, sampling convs
    assert {"conv_in", "down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.time_emb_proj",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"} <= set(names)


def test_one_step_regresses_to_the_frozen_model_at_samples_of_the_trained_model(tiny_sd15_path):
    """x_t is sampled with the LoRA on; ε(x_t, t) and ε(x_t, c, t) come from the UNet with it off (equal to a
    freshly loaded base UNet); the loss is MSE(ε*, ε_u − η(ε_c − ε_u))."""
    from diffusers import DDIMScheduler

    from erasure.esd import ddim_step, unet_output

    pipe, _ = _adapted(tiny_sd15_path, "x")
    torch.manual_seed(1)
    with torch.no_grad():  # a LoRA that changes the model, so trained and frozen predictions differ
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    cond = encode_concepts(pipe, ["nude person", "a red dog"], 32, "cpu")
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    alphas = scheduler.alphas_cumprod
    eta, guidance, steps = 1.5, 3.0, 10
    objective = ESDObjective(pipe.unet, cond, alphas, "epsilon", eta, steps, guidance)
    d = draw(torch.Generator().manual_seed(0), 2, 2, 1000, (4, 16, 16))
    d = type(d)(d.concept_index, 400, d.noise)  # a mid-trajectory timestep: 12 sampling steps
    parts = objective(d)

    hidden_c = cond.concept[d.concept_index]
    hidden_u = cond.uncond.expand(2, -1, -1)

    def sample(unet):
        x = d.noise
        path = trajectory(1000, 400, steps)
        with torch.no_grad():
            for t, t_next in zip(path[:-1], path[1:]):
                u = unet_output(unet, x, t, hidden_u, None, None)
                c = unet_output(unet, x, t, hidden_c, None, None)
                x = ddim_step(x, u + guidance * (c - u), alphas[t], alphas[t_next])
        return x

    torch.testing.assert_close(parts.latents, sample(pipe.unet), rtol=1e-4, atol=1e-5)
    frozen = load_pipeline(tiny_sd15_path).unet
    assert (parts.latents - sample(frozen)).abs().max() > 1e-3  # made by the trained model, not the frozen one
    with torch.no_grad():
        eps_u = unet_output(frozen, parts.latents, 400, hidden_u, None, None)
        eps_c = unet_output(frozen, parts.latents, 400, hidden_c, None, None)
        eps_star = unet_output(pipe.unet, parts.latents, 400, hidden_c, None, None)
    torch.testing.assert_close(parts.eps_uncond, eps_u, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts.eps_concept, eps_c, rtol=1e-4, atol=1e-5)
    assert (eps_star - eps_c).abs().max() > 1e-3
    by_hand = ((eps_star - (eps_u - eta * (eps_c - eps_u))) ** 2).mean()
    assert parts.loss.item() == pytest.approx(by_hand.item(), rel=1e-4)
    parts.loss.backward()  # the gradient reaches the LoRA only
    grads = {n: p.grad for n, p in pipe.unet.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n and "attn2" in n for n in grads)


def _config(tmp_path, model, **erase):
    section = {"model": str(model), "concepts": ["nude person", "a red dog"], "iterations": 3, "sampling_steps": 4,
               "log_every": 1, "learning_rate": 1e-2, "batch_size": 2,
               "erasures": {"esd_x": {"method": "x", "output_dir": str(tmp_path / "esd_x")},
                            "esd_u": {"method": "u", "output_dir": str(tmp_path / "esd_u")}}}
    section.update(erase)
    path = tmp_path / "erase.yaml"
    path.write_text(yaml.safe_dump({"erase": section}))
    return path


def test_erase_writes_loras_that_stock_load_lora_weights_loads(tiny_sd15_path, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    config = _config(tmp_path, tiny_sd15_path)
    assert main(["--config", str(config)]) == 0
    assert "wrote" in capsys.readouterr().out
    prompt = dict(prompt="a photo of a nude person", num_inference_steps=4, guidance_scale=3.0, output_type="np")
    base = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_path))
    base.set_progress_bar_config(disable=True)
    reference = base(**prompt, generator=torch.Generator().manual_seed(0)).images
    for name, method in (("esd_x", "x"), ("esd_u", "u")):
        folder = tmp_path / name
        assert (folder / LORA_WEIGHT_NAME).is_file() and (folder / MARKER).is_file()
        summary = json.loads((folder / "erase_summary.json").read_text())
        assert summary["method"] == f"ESD-{method}" and summary["iterations"] == 3
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 3
        assert yaml.safe_load((folder / "resolved_config.yaml").read_text())["concepts"] == ["nude person", "a red dog"]
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_path))  # nothing of this project involved
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(folder))
        # every trained layer is loaded: linear and convolution layers alike
        adapted = {n.split(".lora_A.")[0] for n, _ in pipe.unet.named_parameters() if ".lora_A." in n}
        assert adapted == set(esd_target_modules(base.unet, method))
        assert any("resnets" in n for n in adapted) == (method == "u")
        images = pipe(**prompt, generator=torch.Generator().manual_seed(0)).images
        assert abs(images - reference).max() > 1e-4  # the trained LoRA changes the model


def test_erase_on_sdxl_writes_a_lora_sdxl_loads(tiny_sdxl_path, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    config = _config(tmp_path, tiny_sdxl_path, iterations=2, only=["esd_x"])
    assert main(["--config", str(config)]) == 0
    assert not (tmp_path / "esd_u").exists()
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_path))
    pipe.load_lora_weights(str(tmp_path / "esd_x"))
    assert any("attn2" in n and "lora_" in n for n, _ in pipe.unet.named_parameters())


@pytest.mark.parametrize("override, message", [
    ("concepts=[]", "at least one concept"),
    ("only=[esd_y]", "unknown erasure(s) ['esd_y']"),
    ("eta=0", "eta must be > 0"),
    ("erasures.esd_x.method=z", "'z' is not one of ['x', 'u']"),
    ("iteratons=5", "unknown key(s) ['iteratons']"),
    ("model=/nonexistent/model", "does not exist"),
])
def test_bad_config_exits_2_with_the_reason(tiny_sd15_path, tmp_path, capsys, override, message):
    config = _config(tmp_path, tiny_sd15_path)
    assert main(["--config", str(config), override]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_it_did_not_write_is_not_replaced(tiny_sd15_path, tmp_path, capsys):
    (tmp_path / "esd_u").mkdir()
    (tmp_path / "esd_u" / "precious.txt").write_text("keep me")
    config = _config(tmp_path, tiny_sd15_path)
    assert main(["--config", str(config)]) == 2
    assert "precious.txt" in capsys.readouterr().err
    assert not (tmp_path / "esd_x").exists()  # refused before any work
    assert (tmp_path / "esd_u" / "precious.txt").read_text() == "keep me"


def test_help_lists_every_key(capsys):
    from core.cli import config_key_docs
    from erasure.config import EraseConfig

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    docs = config_key_docs(EraseConfig)
    assert {"concepts", "eta", "erasures.<name>.method", "lora.rank", "sampling_guidance"} <= {d.key for d in docs}
    for doc in docs:
        assert len(doc.help) >= 8, doc.key
        assert f"--{doc.key} ({doc.type}" in out, doc.key
        assert " ".join(doc.help.split()) in out, doc.key


def _same_weights(one_folder, two_folder) -> bool:
    from safetensors.torch import load_file

    one, two = load_file(one_folder / LORA_WEIGHT_NAME), load_file(two_folder / LORA_WEIGHT_NAME)
    return one.keys() == two.keys() and all(torch.equal(one[key], two[key]) for key in one)


def _erase_in_a_process(config, *overrides) -> None:
    """The reference run in a fresh process, as the parallel run's children are (this process's torch state, e.g.
    its thread count, may have been changed by earlier tests and would change the float rounding)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "erasure.erase", "--config", str(config), *overrides]
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0


def test_a_failed_erasure_process_is_reported_and_the_other_one_matches_a_sequential_run(tiny_sd15_path, tmp_path,
                                                                                          capsys):
    sequential, parallel = tmp_path / "one", tmp_path / "two"
    sequential.mkdir(), parallel.mkdir()
    _erase_in_a_process(_config(sequential, tiny_sd15_path), "only=[esd_x]")
    (parallel / "blocker").write_text("a file where esd_u's parent folder should be")  # esd_u fails on writing
    assert main(["--config", str(_config(parallel, tiny_sd15_path)), "processes=2",
                 f"erasures.esd_u.output_dir={parallel / 'blocker' / 'esd_u'}"]) == 2
    assert "erasure process(es) failed (exit codes {'esd_u'" in capsys.readouterr().err
    assert _same_weights(sequential / "esd_x", parallel / "esd_x")
    assert yaml.safe_load((parallel / "esd_x" / "resolved_config.yaml").read_text())["only"] == ["esd_x"]


@pytest.mark.slow
def test_erasures_in_processes_write_the_same_weights_as_one_after_another(tiny_sd15_path, tmp_path, capsys):
    sequential, parallel = tmp_path / "one", tmp_path / "two"
    sequential.mkdir(), parallel.mkdir()
    _erase_in_a_process(_config(sequential, tiny_sd15_path), "processes=1")
    assert main(["--config", str(_config(parallel, tiny_sd15_path)), "processes=2"]) == 0
    assert capsys.readouterr().out.count("wrote") == 2
    for name in ("esd_x", "esd_u"):
        assert _same_weights(sequential / name, parallel / name)
