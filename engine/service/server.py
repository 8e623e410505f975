"""Run the service: :func:`serve` (``python -m cogvideo_engine serve``) -- uvicorn on the app of :mod:`.app`.

Shutdown (SIGINT / SIGTERM): the service stops taking jobs at once (``/health`` 503, event streams end), running
jobs get ``shutdown_timeout_s`` to finish, and what is still unfinished stays in the store with its last
checkpoint, to resume at the next start.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

from .app import API_KEY_ENV, create_app, manager_of


def default_store() -> Path:
    """``<engine home>/jobs`` (``$COGVIDEO_ENGINE_HOME``, default ``~/.cache/cogvideo_engine``)."""
    from ..io.default_assets import engine_home

    return engine_home() / "jobs"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(load_engine: Callable[[], object], *, host: str = "127.0.0.1", port: int = 8000,
          store: str | os.PathLike | None = None, api_key: str | None = None, allow_unauthenticated: bool = False,
          log_level: str = "info", **app_kwargs) -> None:
    """Serve until interrupted. ``api_key``: None takes ``$COGVIDEO_API_KEY`` (unset: no key); without a key a
    non-loopback ``host`` is refused unless ``allow_unauthenticated``. ``app_kwargs``: see
    :func:`~.app.create_app`."""
    import uvicorn

    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    if not api_key and not is_loopback(host) and not allow_unauthenticated:
        raise ValueError(f"refusing to serve {host} without an API key: anyone who reaches it could run jobs. Give "
                         f"--api-key (or ${API_KEY_ENV}), bind 127.0.0.1, or pass --allow-unauthenticated")
    store = Path(store) if store is not None else default_store()
    app = create_app(load_engine, str(store), api_key=api_key, **app_kwargs)
    manager = manager_of(app)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # first signal: stop taking jobs, end the event streams
            manager.begin_drain()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host.strip("[]"), port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=10)
    Server(config).run()
