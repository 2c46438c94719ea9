"""The server's application: the API, its error replies, and the page."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .api import router
from .errors import install_error_handlers
from .exact import ExactJSONResponse
from .worker import ModelWorker

PAGE = Path(__file__).with_name("page")


def create_app(worker: ModelWorker, cache_dir: Optional[str | Path] = None) -> FastAPI:
    """The application over a started worker; the local OEIS index, if
    any, is the one in `cache_dir` (None: the default cache)."""
    app = FastAPI(title="nextterm-mlx", version=__version__, default_response_class=ExactJSONResponse,
                  description="Next terms of integer sequences from a NextTerm model loaded once. Each term "
                  "in a response is also given as a decimal string under its key + \"_str\".")
    app.state.worker = worker
    app.state.cache_dir = cache_dir
    install_error_handlers(app)
    app.include_router(router)
    app.mount("/page", StaticFiles(directory=PAGE), name="page")
    app.add_api_route("/", lambda: FileResponse(PAGE / "index.html"), include_in_schema=False)
    return app
