"""What a client sees when a request fails: always {"error": "one line"}.
Bad input is HTTP 422 with the message the command line gives; a full queue
is 503 with Retry-After; anything else is 500 (uvicorn logs its traceback),
and the server goes on."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import UserError
from .waiting import ClientLeft
from .worker import Busy

RETRY_AFTER_SECONDS = 1
EXAMPLE = '{"terms": [1, 2, 3]}'


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(UserError, bad_input)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Busy, busy)
    app.add_exception_handler(ClientLeft, client_left)
    app.add_exception_handler(Exception, failed)


def error(status: int, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers)


async def http_error(request: Request, e: HTTPException) -> JSONResponse:
    """404 for a path the server lacks, 405 for a wrong method: what a page can test for."""
    return error(e.status_code, f"{e.detail}: {request.method} {request.url.path}", e.headers)


async def bad_input(request: Request, e: UserError) -> JSONResponse:
    return error(422, str(e))


async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
    return error(422, one_line(e.errors()[0]))


async def busy(request: Request, e: Busy) -> JSONResponse:
    return error(503, f"the server is busy: its queue is full; retry in {RETRY_AFTER_SECONDS} s",
                 {"Retry-After": str(RETRY_AFTER_SECONDS)})


async def client_left(request: Request, e: ClientLeft) -> Response:
    return Response(status_code=499)  # nobody reads it; nginx's code for a client that left


async def failed(request: Request, e: Exception) -> JSONResponse:
    return error(500, f"internal error ({type(e).__name__}: {e}); the server goes on")


def one_line(problem: dict[str, Any]) -> str:
    """A pydantic validation error as one line, in the words the command line uses."""
    kind, given = problem["type"], shown(problem.get("input"))
    where = problem["loc"][1] if len(problem["loc"]) > 1 else "body"
    if kind == "json_invalid":
        return f"the request body is not valid JSON ({problem['ctx']['error']}); send e.g. {EXAMPLE}"
    if where == "body":
        return f"the request body must be a JSON object, e.g. {EXAMPLE}"
    if kind == "extra_forbidden":
        return f"unknown field {where!r}; /docs lists each request's fields"
    if kind == "missing":
        return f"the field {where!r} is missing; send e.g. {EXAMPLE}"
    if kind in ("list_type", "string_type"):
        return f"{where} must be a list of integers or a text such as '1, 2, 3', not {given}"
    if kind.startswith("int"):
        return f"{where} must be a whole number, not {given}"
    if kind == "greater_than_equal":
        return f"{where} must be at least {problem['ctx']['ge']}, not {given}"
    if kind.startswith("bool"):
        return f"{where} must be true or false, not {given}"
    return f"{where}: {problem['msg']}"


def shown(value: Any) -> str:
    return repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
