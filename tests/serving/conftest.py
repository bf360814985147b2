"""Fixtures for the guarded generation service: the tiny model behind a stack with a scripted output check, served
on loopback in a background thread, and a small HTTP client."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any, Optional

import pytest

from core.config import config_from_dict
from core.models import load_pipeline
from mitigations.filter import PromptFilter, PromptFilterConfig
from mitigations.moderation import FlagRule, ImageModerator, ModerationConfig
from mitigations.rewrite import PromptRewriter, RewriteConfig
from mitigations.stack import GuardedGenerator
from serving.config import ServeConfig
from serving.server import DecisionLog, ServeApp, ServeServer, start_in_thread
from serving.tokens import TokenTable

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789abc"}


class FlagWhenAsked:
    """Output check for tests: flags the next ``flag_next`` images it scores (random-weight images carry no
    concept a real scorer could find)."""

    name = "flag_when_asked"

    def __init__(self):
        self.flag_next = 0

    def score(self, images, prompts=None):
        out = []
        for _ in images:
            flagged = self.flag_next > 0
            self.flag_next -= 1 if flagged else 0
            out.append({"scores": {"nudity": float(flagged)}, "labels": {}})
        return out


class LiveServe:
    """The service over the tiny model in a background thread, with its decision log and output check."""

    def __init__(self, pipe, folder: Path, **overrides: Any):
        self.folder = Path(folder)
        stack = {"prompt_filter": {"config": "given"}, "rewrite": {"config": "given"},
                 "output_check": {"config": "given"},
                 "regenerate": {"mode": "guided", "max_tries": 2, "concepts": {"nudity": "nude"}}}
        data = {"model": "tiny", "generation": {"sampler": "ddim", "steps": 2, "guidance": 5.0, "batch_size": 1},
                "stack": stack, "port": 0, "rate_limit": {"requests": 100, "window_seconds": 60}}
        self.cfg = config_from_dict(ServeConfig, data, [f"{k}={json.dumps(v)}" for k, v in overrides.items()],
                                    where="serve")
        self.scorer = FlagWhenAsked()
        moderator = ImageModerator(ModerationConfig(scorers={"clip": {}}, flags=[
            FlagRule("nudity", "clip", score="nudity", threshold=0.5)]), scorers={"clip": self.scorer})
        rewriter = PromptRewriter(config_from_dict(RewriteConfig, {"reframe": [
            {"name": "beach", "contexts": ["beach"], "phrase": "wearing a suit", "request_policy": "honour"}]}))
        generator = GuardedGenerator(pipe, self.cfg.stack, self.cfg.generation,
                                     prompt_filter=PromptFilter(PromptFilterConfig(blocklist={"explicit": ["nude"]})),
                                     rewriter=rewriter, moderator=moderator)
        self.log_path = self.folder / "decisions.jsonl"
        self.app = ServeApp(generator, self.cfg, TokenTable(TOKENS), DecisionLog(self.log_path))
        self.server = ServeServer(("127.0.0.1", 0), self.app)
        self.thread = start_in_thread(self.server)
        self.host, self.port = self.server.server_address[:2]

    def request(self, method: str, path: str, body: Optional[bytes | dict] = None, token: Optional[str] = "alice",
                headers: Optional[dict] = None) -> tuple[int, dict, Any]:
        """(status, headers, JSON body or raw bytes) of one request on a fresh connection."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        sent = {} if body is None else {"Content-Type": "application/json"}
        if token is not None:
            sent["Authorization"] = f"Bearer {TOKENS.get(token, token)}"
        sent.update(headers or {})
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        try:
            payload: Any = json.loads(data)
        except ValueError:
            payload = data
        return response.status, dict(response.getheaders()), payload

    def generate(self, prompt: str, seed: Optional[int] = 3, **kwargs: Any) -> tuple[int, dict, Any]:
        body = {"prompt": prompt} if seed is None else {"prompt": prompt, "seed": seed}
        return self.request("POST", "/api/generate", body, **kwargs)

    def log_entries(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.app.decision_log.close()


@pytest.fixture(scope="module")
def tiny_pipe(tiny_sd15_path):
    return load_pipeline(tiny_sd15_path)


@pytest.fixture
def live(tiny_pipe, tmp_path):
    servers = []

    def start(**overrides: Any) -> LiveServe:
        server = LiveServe(tiny_pipe, tmp_path / f"server{len(servers)}", **overrides)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
