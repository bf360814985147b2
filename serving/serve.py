"""``python -m serving.serve --config FILE [key=value ...]`` (``make serve``): the guarded generation service.

Loads the model (and the LoRA, when ``serve.lora`` is set), builds the guard stack of ``serve.stack`` (prompt
filter, rewrite, output check with its scorers looked up by name, regeneration, blur), reads the client tokens and
serves the API and the page on ``serve.host:serve.port`` (loopback unless ``allow_remote``) until ctrl-c or SIGTERM.
Every request's decisions are appended to ``serve.decision_log`` (default runs/<config name>/serve/decisions.jsonl).

    python -m serving.tokens add alice --file runs/demo/serve_tokens.txt
    make serve ARGS="tokens_file=runs/demo/serve_tokens.txt"
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from core.cli import StageCLI, resolve_device, run_main, stop_on_signals
from core.config import config_name
from mitigations.stack import GuardedGenerator, load_model
from serving.config import ServeConfig
from serving.server import DecisionLog, ServeApp, ServeServer, announce
from serving.tokens import load_tokens

CLI = StageCLI(ServeConfig, "serve", prog="python -m serving.serve", description=__doc__,
               config_default="configs/demo.yaml")


def default_decision_log(config_path: str | None) -> Path:
    return Path("runs") / config_name(config_path) / "serve" / "decisions.jsonl"


def build_server(cfg: ServeConfig, decision_log: str | Path) -> ServeServer:
    """The server over ``cfg``'s model and stack, bound but not serving yet."""
    tokens = load_tokens(cfg.tokens_file, cfg.tokens_env)
    pipe = load_model(cfg.model, cfg.lora, cfg.generation.dtype, resolve_device(cfg.device, "serve.device"),
                      cfg.variant)
    generator = GuardedGenerator(pipe, cfg.stack, cfg.generation)
    return ServeServer((cfg.host, cfg.port), ServeApp(generator, cfg, tokens, DecisionLog(decision_log)))


def main(argv: list[str] | None = None) -> int:
    parser = CLI.parser()
    parser.add_argument("--verbose", action="store_true", help="log every request's path and status")
    args = CLI.parse_args(argv, parser)
    args.config = args.config or CLI.config_default

    def work() -> None:
        cfg = CLI.load(args)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        decision_log = cfg.decision_log or default_decision_log(args.config)
        server = build_server(cfg, decision_log)
        stop_on_signals()
        announce(server)
        print(f"decision log: {decision_log}", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            server.app.decision_log.close()

    return run_main(work)


if __name__ == "__main__":
    status = main()
    # The service has stopped through its own cleanup (socket closed, decision log closed). Leave without the
    # interpreter's teardown: there, native worker threads that torch started for generation are sometimes still
    # alive and the C++ runtime aborts the process ("terminate called without an active exception", exit -6) after
    # a clean stop, which a supervisor would read as a crash.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
