"""The ``serve:`` section of a config file: the model, the guard stack and the server, as one validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from core.errors import ConfigError
from core.web import is_loopback
from inference.config import GenerationConfig
from mitigations.stack import StackConfig

TOKENS_ENV = "SAFE_DIFFUSION_DPO_SERVE_TOKENS"


@dataclass
class RateLimitConfig:
    """Requests one token may make in a sliding window; more get 429 with Retry-After."""

    requests: int = field(default=10, metadata={"help": "Requests per token per window."})
    window_seconds: float = field(default=60.0, metadata={"help": "Length of the sliding window, in seconds."})

    def validate(self) -> None:
        if self.requests < 1:
            raise ConfigError(f"serve.rate_limit.requests must be >= 1, got {self.requests}")
        if self.window_seconds <= 0:
            raise ConfigError(f"serve.rate_limit.window_seconds must be > 0, got {self.window_seconds}")


@dataclass
class ServeConfig:
    """The ``serve:`` section."""

    # --- the model ---
    model: str = field(metadata={
        "help": "Local diffusers model folder (or a hub id already in the local Hugging Face cache)."})
    lora: Optional[str] = field(default=None, metadata={
        "help": "LoRA folder a training run wrote (make train), loaded into the model; null: the model alone."})
    variant: Optional[str] = field(default=None, metadata={
        "help": "Weights variant of the model folder (e.g. fp16); null: the plain weights."})
    device: str = field(default="auto", metadata={"help": "Device of the model: auto, cpu, cuda, cuda:1."})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={
        "help": "Sampler, steps, guidance, resolution and dtype of every generation (fast paths are not applied: "
                "fast_paths must not be true)."})
    stack: StackConfig = field(default_factory=StackConfig, metadata={
        "help": "The guard layers around the model (mitigations.stack): prompt filter, rewrite, output check, "
                "regeneration, blur."})
    # --- the server ---
    host: str = field(default="127.0.0.1", metadata={"help": "Address the server binds to."})
    port: int = field(default=8770, metadata={"help": "TCP port of the server (0: any free port)."})
    allow_remote: bool = field(default=False, metadata={
        "help": "Allow binding a non-loopback host; the service has no TLS, so put it behind a TLS proxy."})
    tokens_file: Optional[str] = field(default=None, metadata={
        "help": "File of client tokens, one NAME:TOKEN a line (python -m serving.tokens add NAME --file FILE "
                "writes one); the tokens of tokens_env count too."})
    tokens_env: str = field(default=TOKENS_ENV, metadata={
        "help": "Environment variable that may hold more NAME:TOKEN entries, separated by commas or whitespace."})
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig, metadata={
        "help": "Per-token rate limit."})
    max_prompt_chars: int = field(default=500, metadata={"help": "Longest prompt accepted, in characters."})
    max_body_bytes: int = field(default=8192, metadata={
        "help": "Largest request body accepted, in bytes (1024 to 1048576)."})
    read_timeout_seconds: float = field(default=30.0, metadata={
        "help": "Seconds after which a client that stops sending mid-request gets 408 (at most 600)."})
    max_waiting: int = field(default=8, metadata={
        "help": "Requests that may wait for the model at once (it generates one at a time); more get 503."})
    decision_log: Optional[str] = field(default=None, metadata={
        "help": "JSON-lines file of every request's decisions (filter, rewrite, tries, flags, blur, latency); "
                "null: runs/<config name>/serve/decisions.jsonl."})
    log_prompts: Literal["allowed", "all", "none"] = field(default="allowed", metadata={
        "help": "Prompt text in the decision log: allowed (the text of prompts the filter let through; a blocked "
                "prompt is logged by its decision only: rule, category, matched term, span and length), all (blocked "
                "prompts too, for a reviewer of the blocklist) or none."})

    def validate(self) -> None:
        if self.generation.fast_paths is True:
            raise ConfigError("serve.generation.fast_paths=true: the service runs the plain pipeline; set it to "
                              "false or auto")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port must be in [0, 65535], got {self.port}")
        if not self.allow_remote and not is_loopback(self.host):
            raise ConfigError(f"serve.host {self.host!r} is not a loopback address; the service has no TLS, so "
                              "binding it elsewhere needs allow_remote=true (put it behind a TLS proxy)")
        if not 1 <= self.max_prompt_chars <= 10000:
            raise ConfigError(f"serve.max_prompt_chars must be in [1, 10000], got {self.max_prompt_chars}")
        if not 1024 <= self.max_body_bytes <= 1 << 20:
            raise ConfigError(f"serve.max_body_bytes must be in [1024, 1048576], got {self.max_body_bytes}")
        if not 0 < self.read_timeout_seconds <= 600:
            raise ConfigError(f"serve.read_timeout_seconds must be in (0, 600], got {self.read_timeout_seconds}")
        if self.max_waiting < 1:
            raise ConfigError(f"serve.max_waiting must be >= 1, got {self.max_waiting}")
        if not self.tokens_env.strip():
            raise ConfigError("serve.tokens_env is empty: name an environment variable")
