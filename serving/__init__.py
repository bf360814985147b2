"""The guarded generation service (``make serve``): the layered stack of :mod:`mitigations.stack` (prompt filter,
rewrite, model, output check, regenerate, blur) behind a small token-authenticated local HTTP API and page.

* ``config``: :class:`serving.config.ServeConfig`, the ``serve:`` section;
* ``tokens``: the clients' bearer tokens (a file or an environment variable), ``python -m serving.tokens add``;
* ``server``: the HTTP server, per-token rate limit, security headers, the decision log;
* ``serve``: the entry point, ``python -m serving.serve --config configs/demo.yaml``.

A stage: it may use every layer below it, and no other stage (docs/ARCHITECTURE.md).
"""
