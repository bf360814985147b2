"""Client tokens of the guarded generation service.

A token identifies a client by name (in the decision log and the rate limit); the client sends it as
``Authorization: Bearer <token>``, never in a URL. Tokens come from a file (``serve.tokens_file``: one
``NAME:TOKEN`` a line, ``#`` comments) and from an environment variable (``serve.tokens_env``: the same entries
separated by commas or whitespace). Only their sha256 digests are kept in memory, and a presented token is
compared with every digest in constant time.

    python -m serving.tokens add alice --file runs/demo/serve_tokens.txt    # prints alice's new token once
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Mapping, Optional

from core.cli import run_main
from core.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_entries(text: str, where: str, separators: str = r"\n") -> dict[str, str]:
    """``{name: token}`` of ``NAME:TOKEN`` entries; a malformed entry or a repeated name is a ConfigError that names
    ``where`` and the entry's position, never the token."""
    entries: dict[str, str] = {}
    for number, raw in enumerate(re.split(separators, text), 1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        name, sep, token = entry.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not NAME.match(name):
            raise ConfigError(f"{where}, entry {number}: write NAME:TOKEN with a name of letters, digits, _ . - "
                              "(at most 64)")
        if not TOKEN.match(token):
            raise ConfigError(f"{where}, entry {number} ({name}): a token is 16 to 256 characters of letters, digits, "
                              "_ and - (python -m serving.tokens add writes one)")
        if name in entries:
            raise ConfigError(f"{where}: the name {name!r} appears twice")
        entries[name] = token
    return entries


class TokenTable:
    """The sha256 digests of the clients' tokens, by client name."""

    def __init__(self, tokens: Mapping[str, str]):
        self._digests = {name: _digest(token) for name, token in tokens.items()}
        if len(set(self._digests.values())) != len(self._digests):
            raise ConfigError("two clients share one token; give each its own")

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def names(self) -> list[str]:
        return sorted(self._digests)

    def identify(self, token: Optional[str]) -> Optional[str]:
        """The client whose token this is, or None. Every digest is compared (constant time per comparison)."""
        if not token:
            return None
        presented = _digest(token)
        found = None
        for name, digest in self._digests.items():
            if hmac.compare_digest(presented, digest):
                found = name
        return found


def load_tokens(tokens_file: Optional[str | Path], env_var: str, environ: Mapping[str, str] = os.environ) -> TokenTable:
    """The tokens of ``tokens_file`` and of the environment variable ``env_var``; none at all is a ConfigError
    saying how to make one."""
    tokens: dict[str, str] = {}
    if tokens_file is not None:
        path = Path(tokens_file)
        if not path.is_file():
            raise ConfigError(f"serve.tokens_file {path} does not exist; create a token with "
                              f"`python -m serving.tokens add NAME --file {path}`")
        tokens.update(parse_entries(path.read_text(encoding="utf-8"), f"serve.tokens_file {path}"))
    if environ.get(env_var):
        from_env = parse_entries(environ[env_var], f"environment variable {env_var}", r"[,\s]+")
        clash = sorted(set(tokens) & set(from_env))
        if clash:
            raise ConfigError(f"the names {clash} are both in serve.tokens_file and in {env_var}")
        tokens.update(from_env)
    if not tokens:
        raise ConfigError(f"no client tokens: set serve.tokens_file (create a token with `python -m serving.tokens "
                          f"add NAME --file FILE`) or the environment variable {env_var} (NAME:TOKEN entries)")
    return TokenTable(tokens)


def add_token(path: str | Path, name: str) -> str:
    """A new random token for ``name`` appended to the tokens file ``path`` (created readable by its owner only);
    returns the token."""
    if not NAME.match(name):
        raise ConfigError(f"client name {name!r}: letters, digits, _ . - (at most 64)")
    path = Path(path)
    existing = parse_entries(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else {}
    if name in existing:
        raise ConfigError(f"{path} already has a token for {name!r}; remove its line first to replace it")
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
        handle.write(f"{name}:{token}\n")
    return token


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.tokens", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="append a new client token to a tokens file and print it", allow_abbrev=False)
    add.add_argument("name", help="the client's name (in logs and the rate limit)")
    add.add_argument("--file", required=True, type=Path, help="the tokens file (serve.tokens_file)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> None:
        token = add_token(args.file, args.name)
        print(token)
        print(f"token for {args.name} added to {args.file} (shown once; send it as 'Authorization: Bearer ...')",
              file=sys.stderr)

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
