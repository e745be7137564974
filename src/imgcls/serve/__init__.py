"""``imgcls serve``: a run folder behind HTTP (FastAPI + uvicorn, the ``serve`` extra).

See :mod:`imgcls.serve.app` for the routes and :class:`ServeConfig` for every limit.
"""

from __future__ import annotations

from pathlib import Path

from imgcls.serve.limits import ServeConfig

__all__ = ["ServeConfig", "create_app", "run_app", "serve"]


def create_app(run: str | Path, config: ServeConfig | None = None):
    """The ASGI app serving RUN; see :func:`imgcls.serve.app.create_app`."""
    from imgcls.serve.app import create_app as _create

    return _create(run, config)


def serve(run: str | Path, config: ServeConfig | None = None) -> None:
    """Serve RUN until interrupted (loopback only unless ``config.host`` says otherwise)."""
    import sys

    from imgcls.errors import require

    require("fastapi", "uvicorn", "multipart", why="`imgcls serve`", extra="serve")
    config = (config or ServeConfig()).validate()
    app = create_app(run, config)
    where = f"http://{config.host}:{config.port}/"
    print(f"serving {run} on {where} (engine {config.engine}); Ctrl-C stops", file=sys.stderr)
    run_app(app, config)


def run_app(app, config: ServeConfig) -> None:
    """Run the ASGI ``app`` with uvicorn under ``config``'s connection limits (the read timeout
    of :mod:`.connections`, ``max_connections``) until interrupted."""
    import uvicorn

    from imgcls.serve.connections import protocol_with_read_timeout

    uvicorn.run(
        app, host=config.host, port=config.port, log_level="warning", access_log=False,
        http=protocol_with_read_timeout(config.read_timeout_s),
        limit_concurrency=config.max_connections,
    )  # fmt: skip
