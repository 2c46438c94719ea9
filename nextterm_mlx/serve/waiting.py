"""Waiting on the event loop for the worker's answers, and dropping the jobs
of a client that leaves before they start."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

from starlette.requests import Request


class ClientLeft(Exception):
    """The client closed its connection before its answer was ready."""


async def answered(request: Request, *futures: Future) -> list[Any]:
    """The futures' results, in order (or the first one's error)."""
    waiting = [asyncio.wrap_future(future) for future in futures]
    everything = asyncio.ensure_future(asyncio.wait(waiting))
    leaving = asyncio.ensure_future(client_left(request))
    try:
        await asyncio.wait([everything, leaving], return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
    if not everything.done():
        # Cancelling reaches the worker's futures: jobs not started yet are
        # skipped, so a queue of abandoned requests costs no decoding.
        everything.cancel()
        for future in waiting:
            future.cancel()
        raise ClientLeft
    return [future.result() for future in waiting]


async def client_left(request: Request) -> None:
    """Returns once the client has disconnected (the request's body is read
    by then, so nothing else is received)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
