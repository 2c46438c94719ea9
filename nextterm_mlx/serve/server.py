"""Run the server: bind, load the model once, serve until interrupted."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, NoReturn

import uvicorn

from ..errors import UserError
from ..predictor import load
from .app import create_app
from .worker import ModelWorker

log = logging.getLogger("nextterm_mlx")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(host: str, port: int, model_options: dict[str, Any]) -> NoReturn:
    """Serve the model that load(**model_options) gives on host:port (0: a
    free port) until a signal stops it; then raise KeyboardInterrupt."""
    # Bound before the model loads, so that a port in use is said at once.
    listener = bind(host, port)
    worker = ModelWorker(lambda: load(**model_options))
    try:
        predictor = worker.start()
        address = f"http://{host if ':' not in host else f'[{host}]'}:{listener.getsockname()[1]}/"
        if host in LOOPBACK:
            log.info("serving %s at %s (Ctrl-C stops it)", predictor.name, address)
        else:
            log.warning("serving %s at %s, open to other machines: the API has no authentication "
                        "(--host 127.0.0.1 keeps it on this one)", predictor.name, address)
        app = create_app(worker, model_options.get("cache_dir"))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        server.run(sockets=[listener])
    finally:
        worker.stop()
        listener.close()
    # uvicorn returns once a signal has stopped it, and may or may not raise
    # the signal again: either way the command was interrupted.
    raise KeyboardInterrupt


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise UserError(f"cannot listen on {host} port {port}: {reason}; "
                        "choose another --port (or --host)") from None
