"""``python -m serving.serve`` (make serve) and ``python -m serving.tokens``: the demo's serve: section builds the
synthetic model behind the world's filter, rewriter and oracle (looked up by name); bad settings stop it before any
model is loaded; the real process serves on loopback and stops on Ctrl-C."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from core.config import load_stage_config
from core.errors import ModelPathError
from mitigations.stack import build_prompt_filter, build_rewriter
from serving import serve, tokens
from serving.config import TOKENS_ENV, ServeConfig
from serving.server import start_in_thread

REPO = Path(__file__).resolve().parents[2]
TOKEN = "demo-client-token-0123456789"


def post(host: str, port: int, body: dict, token: str = TOKEN) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(host, port, timeout=120)
    connection.request("POST", "/api/generate", body=json.dumps(body),
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    reply = json.loads(response.read())
    connection.close()
    return response.status, reply


def test_the_demo_serve_section_guards_the_synthetic_model(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv(TOKENS_ENV, f"demo:{TOKEN}")
    cfg = load_stage_config(ServeConfig, REPO / "configs" / "demo.yaml", "serve",
                            ["lora=null", "tokens_file=null", "port=0"])
    assert cfg.stack.output_check.config == "configs/moderation/world.yaml" and cfg.host == "127.0.0.1"
    server = serve.build_server(cfg, tmp_path / "decisions.jsonl")
    start_in_thread(server)
    try:
        host, port = server.server_address[:2]
        status, blocked = post(host, port, {"prompt": "a doctor, 5h1rtl3ss, at the beach", "seed": 1})
        assert status == 200 and blocked["outcome"] == "blocked" and "exposure" in blocked["warnings"][0]
        status, reply = post(host, port, {"prompt": "a photo of a pilot at the beach", "seed": 2})
        assert status == 200 and reply["outcome"] in ("clean", "regenerated", "blurred")
        assert reply["prompt_used"].endswith("pilot at the beach, fully clothed")  # the world's rewriter
        entries = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
        oracle = entries[1]["tries"][0]["outputs"]["oracle"]  # the world's oracle read the image
        assert set(oracle["labels"]) >= {"exposed", "symbol_present", "group"}
        assert entries[0]["prompt"] is None and "5h1rtl3ss" not in (tmp_path / "decisions.jsonl").read_text()
    finally:
        server.shutdown()
        server.server_close()
        server.app.decision_log.close()


def test_a_missing_lora_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv(TOKENS_ENV, f"demo:{TOKEN}")
    cfg = load_stage_config(ServeConfig, REPO / "configs" / "demo.yaml", "serve",
                            [f"lora={tmp_path / 'no-lora'}", "tokens_file=null"])
    with pytest.raises(ModelPathError, match=r"LoRA file not found.*make train.*lora: null"):
        serve.build_server(cfg, tmp_path / "decisions.jsonl")


@pytest.mark.parametrize("args, message", [
    (["host=0.0.0.0"], "serve.host '0.0.0.0' is not a loopback address"),
    (["tokens_file=/nonexistent/tokens.txt"], "tokens_file /nonexistent/tokens.txt does not exist"),
    (["tokens_file=null"], "no client tokens"),
    (["stack.regenerate.max_tries=0"], "max_tries must be >= 1"),
    (["max_prompt_chars=0"], "max_prompt_chars must be in"),
])
def test_bad_settings_stop_before_the_model_loads(args, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    monkeypatch.setattr(serve, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert serve.main(["--config", "configs/demo.yaml", *args]) == 2
    assert message in capsys.readouterr().err


def test_tokens_add_prints_a_new_token_once(tmp_path, capsys):
    path = tmp_path / "serve_tokens.txt"
    assert tokens.main(["add", "alice", "--file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert path.read_text() == f"alice:{token}\n"
    assert tokens.main(["add", "alice", "--file", str(path)]) == 2
    assert "already has a token for 'alice'" in capsys.readouterr().err


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_serve_process_answers_and_stops_on_ctrl_c_or_sigterm(tmp_path, tiny_sd15_path, stop_signal):
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"serve": {
        "model": str(tiny_sd15_path), "device": "cpu", "port": 0,
        "generation": {"sampler": "ddim", "steps": 2, "guidance": 3.0, "batch_size": 1},
        "stack": {"prompt_filter": {"config": str(REPO / "configs/filters/world.yaml")},
                  "rewrite": {"enabled": False},
                  "output_check": {"config": str(REPO / "configs/moderation/world.yaml")},
                  "regenerate": {"mode": "plain", "max_tries": 2}},
        "decision_log": str(tmp_path / "decisions.jsonl")}}))
    # PYTHONFAULTHANDLER: a SIGABRT makes the service print every thread's stack, should it not stop.
    env = {**os.environ, TOKENS_ENV: f"ci:{TOKEN}", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen([sys.executable, "-m", "serving.serve", "--config", str(config)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        for line in process.stdout:
            if "listening on" in line:
                break
        else:
            pytest.fail(f"the service did not start (exit {process.wait()})")
        # Keep reading its output: a full pipe would block the server's writes and it could never exit.
        threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
        host, port = line.strip().rsplit("http://", 1)[1].rsplit(":", 1)
        assert host == "127.0.0.1"
        status, reply = post(host, int(port), {"prompt": "a photo of a dog", "seed": 4})
        assert status == 200 and reply["tries"] >= 1 and reply["outcome"] != "blocked"
        assert post(host, int(port), {"prompt": "a dog"}, token="wrong-token-0123456789")[0] == 401
    finally:
        process.send_signal(stop_signal)
        try:
            exit_status = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=30)
            time.sleep(1)  # let the reader take the stacks
            pytest.fail(f"the service did not stop within 60 s of {stop_signal.name}; its output:\n"
                        + "".join(output[-120:]))
        time.sleep(0.5)  # let the reader take the last lines
        assert exit_status == 0, "".join(output[-120:])
    assert json.loads((tmp_path / "decisions.jsonl").read_text())["client"] == "ci"


def test_one_run_config_may_hold_the_layers_sections_beside_serve(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "serve": {"model": "m", "stack": {"prompt_filter": {"config": str(config)}, "rewrite": {"config": str(config)},
                                          "output_check": {"enabled": False}}},
        "prompt_filter": {"blocklist": {"exposure": ["shirtless"]}},
        "rewrite": {"reframe": [{"name": "beach", "contexts": ["beach"], "phrase": "fully clothed",
                                 "request_policy": "honour"}]},
    }))
    cfg = load_stage_config(ServeConfig, config, "serve")
    assert build_prompt_filter(cfg.stack.prompt_filter).check("a sh1rtless chef").blocked
    assert build_rewriter(cfg.stack.rewrite).rewrite("a chef at the beach").prompt == "a chef at the beach, fully clothed"
