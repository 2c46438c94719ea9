"""The API's endpoints.

An endpoint that needs the model asks the worker, which batches what it
can: `await answered(request, worker.call(lambda predictor: ...))` runs any
function of the Predictor on the model's thread. One that needs no model is
a plain FastAPI function. Either raises UserError for bad input (HTTP 422
with its message), and what it returns travels with exact integers
(exact.py)."""

from __future__ import annotations

from typing import Annotated, Any, Optional, Union

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..explain import explained
from ..guess import DEFAULT_SPARE, guess
from ..oeis import ATTRIBUTION, open_index
from ..predictor import Predictor
from ..terms import check_terms
from .errors import error
from .waiting import answered
from .worker import ModelWorker

router = APIRouter()

Count = Annotated[int, Field(strict=True, ge=1)]


class TermsRequest(BaseModel):
    """A request about one sequence; a field it does not know is refused."""

    model_config = ConfigDict(extra="forbid")

    terms: Union[list[Any], str] = Field(
        description="The sequence: a list of integers, each a JSON number or a decimal string (exact at any "
        "size), or one text such as \"1, 2, 3\".",
        examples=[[1, 1, 2, 3, 5, 8]],
        json_schema_extra={"items": {"anyOf": [{"type": "integer"}, {"type": "string"}]}},
    )


class PredictRequest(TermsRequest):
    n: Count = Field(1, description="How many next terms to predict, each fed back for the next.")
    beams: Optional[Count] = Field(None, description="Rank candidate next terms by beam search with this many beams.")
    top: Optional[Count] = Field(None, description="How many candidates to give (default: the number of beams).")
    strict: bool = Field(False, strict=True, description="Only allow tokens that form a canonical integer.")


class GuessRequest(TermsRequest):
    n: Count = Field(1, description="How many next terms each formula gives.")
    spare: Count = Field(DEFAULT_SPARE, description="How many terms beyond those it was fitted to a formula "
                         "must reproduce.")


class ExplainRequest(GuessRequest):
    strict: bool = Field(False, strict=True, description="Only allow tokens that form a canonical integer.")


class SearchRequest(TermsRequest):
    limit: Count = Field(10, description="How many matches to give at most.")
    transforms: bool = Field(False, strict=True, description="Also search the terms divided by their gcd, "
                             "shifted by a constant, their first differences and their partial sums.")


def model_worker(request: Request) -> ModelWorker:
    return request.app.state.worker


Worker = Annotated[ModelWorker, Depends(model_worker)]


@router.get("/health")
def health(worker: Worker) -> dict[str, Any]:
    """The model's name, and that it is ready to answer."""
    return {"model": worker.predictor.name, "ready": True}


@router.post("/v1/predict")
async def predict(body: PredictRequest, request: Request, worker: Worker) -> dict[str, Any]:
    """The object `nextterm-mlx predict --json` prints: the next `n` terms,
    and with `beams`, the ranked candidates for the next one."""
    if body.top is not None and (body.beams is None or body.top > body.beams):
        raise UserError("top needs beams at least as large, e.g. \"beams\": 8, \"top\": 3")
    if body.beams is not None and body.n > 1:
        raise UserError("beams ranks candidates for the next term only; drop n or beams")
    terms = readable_terms(body, worker)
    futures = [worker.continue_sequence(terms, body.n, body.strict)]
    if body.beams is not None:
        futures.append(worker.candidates(terms, body.beams, body.top, body.strict))
    predictions, *found = await answered(request, *futures)
    record = {"model": worker.predictor.name, "terms": terms, "predictions": [p.to_dict() for p in predictions]}
    if found:
        record.update(found[0].to_dict())
    return record


@router.post("/v1/guess")
def guess_formulas(body: GuessRequest) -> dict[str, Any]:
    """The object `nextterm-mlx guess --json` prints: the exact formulas
    that fit the terms, simplest first, and the next terms they give."""
    return guess(check_terms(body.terms), count=body.n, spare=body.spare).to_dict()


@router.post("/v1/explain")
async def explain(body: ExplainRequest, request: Request, worker: Worker) -> dict[str, Any]:
    """The object `nextterm-mlx predict --json --explain --hybrid` prints:
    the model's next terms, each verified formula with the model's
    probability for its next term, and the hybrid answer."""
    terms = readable_terms(body, worker)

    index = open_index(request.app.state.cache_dir)

    def answer(predictor: Predictor) -> dict[str, Any]:
        predictions = predictor.continue_sequence(terms, body.n, body.strict)
        record = {"model": predictor.name, "terms": terms, "predictions": [p.to_dict() for p in predictions]}
        return {**record, **explained(predictor, terms, predictions, body.spare, body.strict, index=index)}

    try:
        [record] = await answered(request, worker.call(answer))
    finally:
        if index is not None:
            index.close()
    return record


@router.post("/v1/oeis/search", response_model=None)
def oeis_search(body: SearchRequest, request: Request) -> dict[str, Any] | JSONResponse:
    """The object `nextterm-mlx oeis search --json` prints: the local OEIS's
    sequences that hold the terms, best first; 503 when there is no index."""
    terms = check_terms(body.terms)
    index = open_index(request.app.state.cache_dir)
    if index is None:
        return error(503, "no local OEIS index; build it with `nextterm-mlx oeis download`")
    with index:
        matches = [match.to_dict() for match in index.search(terms, body.limit, body.transforms)]
    return {"terms": terms, "matches": matches, "license": ATTRIBUTION}


def readable_terms(body: TermsRequest, worker: ModelWorker) -> list[int]:
    """The request's terms, refused here, before they join a batch, if the
    model can't read them."""
    terms = check_terms(body.terms)
    worker.predictor.prompt(terms)
    return terms
