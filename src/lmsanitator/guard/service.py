"""The guard as an HTTP service (FastAPI + uvicorn).

    POST /predict   {"inputs": [{"text": ..., "text_pair": ...} | {"tokens": [...]}, ...]}
                    -> {"results": [record, ...]}   (records as ``lmsanitator guard`` writes them)
    GET  /health    -> {"status": "ok" | "busy", "busy": bool, "waiting": N, "model": ..., "pvs": N, ...}

The request schema (for this model's task) and every answer are in the OpenAPI document
(``/openapi.json``). Errors are ``{"error": "..."}``:

* 400: the body is not UTF-8 JSON within the parser's limits (:class:`~lmsanitator.core.io.JsonLimits`:
  nesting depth, number length, lone surrogates), or a record is malformed;
* 408: the body did not arrive within ``read_timeout`` seconds (a slow client holds no worker);
* 413: the body exceeds ``max_body_bytes`` or the batch ``max_batch`` inputs;
* 415: the Content-Type is not JSON;
* 503: the model is busy: another batch held it for ``queue_wait`` seconds, or ``max_waiting``
  requests already wait for it (``Retry-After`` says when to try again);
* 504: the batch ran past ``deadline`` seconds.

Records follow the guard's ``on_unresolved`` policy, ``reject`` by default: an input that trigger
removal left flagged (no window unflags it, or the budget ran out) gets ``"rejected": true`` and no
label, never an answer as if clean; ``best`` / ``predict`` answer it with ``"answered_unresolved": true``.

The model runs one batch at a time (a lock; torch uses the cores inside one forward pass) in a
worker thread, so the event loop keeps answering ``/health`` and rejecting bad requests while a
batch runs. Each request logs one line (rejections at WARNING with the reason; never a traceback).
``serve`` stops on SIGTERM / Ctrl-C within ``shutdown_timeout`` seconds, even mid-batch.
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` annotation

import asyncio
import logging
import os
import threading
import time

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import JsonLimits, parse_json
from lmsanitator.data.inputs import parse_input_records
from lmsanitator.guard.guard import GuardDeadline

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_QUEUE_WAIT_S = 10.0
DEFAULT_MAX_WAITING = 16
DEFAULT_DEADLINE_S = 30.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 3.0

log = logging.getLogger("lmsanitator.service")


# "has a character that is not whitespace", with whitespace as Python's str.strip sees it (what the
# input checks use): regex engines disagree on \s (JavaScript's leaves out U+0085 and U+001C-U+001F)
_SPACES = "".join(f"\\u{c:04x}" for c in range(0x3001) if chr(c).isspace())
NONBLANK = f"[^{_SPACES}]"


class _Busy(Exception):
    """The model lock was not free within the queue wait."""


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _schemas(task, max_batch: int):
    """Pydantic models of this model's request and answers, for the OpenAPI document (the body is
    parsed by :func:`parse_json` with its limits, not by pydantic)."""
    from pydantic import BaseModel, ConfigDict, Field  # noqa: PLC0415  heavy: comes with fastapi (optional)

    nonblank = Field(pattern=NONBLANK, description="a non-blank string")
    if task.kind == "token":

        class InputRecord(BaseModel):
            tokens: list[str] = Field(min_length=1, description="the words of one sentence, each non-blank")

    elif task.pair:

        class InputRecord(BaseModel):
            text: str = nonblank
            text_pair: str = Field(pattern=NONBLANK, description="the second text of the pair")

    else:

        class InputRecord(BaseModel):
            text: str = nonblank
            text_pair: None = Field(default=None, description="not allowed: the model takes one text")

    class PredictRequest(BaseModel):
        inputs: list[InputRecord] = Field(min_length=1, max_length=max_batch)

    class PredictResponse(BaseModel):
        model_config = ConfigDict(extra="allow")
        results: list[dict] = Field(description="one guard record per input, in order")

    class ErrorResponse(BaseModel):
        error: str

    class Health(BaseModel):
        model_config = ConfigDict(extra="allow")
        status: str = Field(description="'ok', or 'busy' while a batch holds the model")
        busy: bool
        waiting: int

    return InputRecord, PredictRequest, PredictResponse, ErrorResponse, Health


def create_app(
    guard,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    queue_wait: float = DEFAULT_QUEUE_WAIT_S,
    max_waiting: int = DEFAULT_MAX_WAITING,
    deadline: float = DEFAULT_DEADLINE_S,
):
    """The FastAPI app. Long, but one closure: the routes share the lock and the counters."""
    from fastapi import FastAPI, Request  # noqa: PLC0415  heavy: optional service dependency
    from fastapi.concurrency import run_in_threadpool  # noqa: PLC0415  heavy: optional service dependency
    from fastapi.openapi.utils import get_openapi  # noqa: PLC0415  heavy: optional service dependency
    from fastapi.responses import JSONResponse  # noqa: PLC0415  heavy: optional service dependency
    from starlette.requests import ClientDisconnect  # noqa: PLC0415  heavy: optional service dependency

    models = _schemas(guard.model.task, max_batch)
    _, PredictRequest, PredictResponse, ErrorResponse, Health = models
    limits = JsonLimits(max_record_chars=max_body_bytes)
    app = FastAPI(title="LMSanitator guard", version="1")
    lock = threading.Lock()
    app.state.model_lock = lock
    state = {"in_flight": 0, "busy_since": None}  # requests past parsing: running or waiting
    stats = {"requests": 0, "inputs": 0, "flagged": 0, "rejected": 0}

    def reject(request, status: int, message: str, **headers) -> JSONResponse:
        stats["rejected"] += 1
        client = request.client.host if request.client else "-"
        log.warning("%s %s %s -> %d: %s", client, request.method, request.url.path, status, message)
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # a bug must not take the service down or leak a traceback
        msg = str(exc).splitlines()[0] if str(exc) else ""
        log.error("%s %s -> 500: %s %s", request.method, request.url.path, type(exc).__name__, msg)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/health", response_model=None, responses={200: {"model": Health}})
    async def health():
        busy = lock.locked()
        since = state["busy_since"]
        return {
            "status": "busy" if busy else "ok",
            "busy": busy,
            "busy_for_s": round(time.monotonic() - since, 3) if busy and since else 0.0,
            "waiting": max(0, state["in_flight"] - busy),
            **guard.info(),
            "max_batch": max_batch,
            "max_body_bytes": max_body_bytes,
            **stats,
        }

    def err(text: str) -> dict:
        return {"model": ErrorResponse, "description": text}

    documented = {
        200: {"model": PredictResponse, "description": "one record per input"},
        400: err("malformed body or record (not UTF-8 JSON, over a parser limit, bad field)"),
        408: err(f"the body did not arrive within {read_timeout} s"),
        413: err(f"body over {max_body_bytes} bytes or more than {max_batch} inputs"),
        415: err("Content-Type is not JSON"),
        503: err("the model is busy with other batches; retry after the Retry-After seconds"),
        504: err(f"the batch ran past its {deadline} s deadline"),
    }
    body_doc = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        }
    }

    @app.post("/predict", response_model=None, responses=documented, openapi_extra=body_doc)
    async def predict(request: Request):
        # long: the request's checks in the order a client meets them, each answering on its own
        t0 = time.monotonic()
        if not _is_json(request.headers.get("content-type", "")):
            return reject(request, 415, "Content-Type must be application/json")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return reject(
                request, 413, f"request body of {declared} bytes exceeds the limit of {max_body_bytes}"
            )
        body = bytearray()
        try:
            async with asyncio.timeout(read_timeout):
                async for chunk in request.stream():  # also bounds chunked bodies that declare no length
                    body.extend(chunk)
                    if len(body) > max_body_bytes:
                        return reject(
                            request, 413, f"request body exceeds the limit of {max_body_bytes} bytes"
                        )
        except TimeoutError:
            return reject(request, 408, f"request body not received within {read_timeout} s")
        except ClientDisconnect:
            return reject(request, 400, "client disconnected while sending the body")
        try:
            obj = parse_json(bytes(body), "request body", limits)
        except LMSanitatorError as exc:
            return reject(request, 400, str(exc))
        inputs = obj.get("inputs") if isinstance(obj, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return reject(
                request,
                400,
                'body must be a JSON object {"inputs": [{"text": ...}, ...]} with at least one input',
            )
        if len(inputs) > max_batch:
            return reject(request, 413, f"{len(inputs)} inputs exceed the batch limit of {max_batch}")
        try:
            texts, pairs = parse_input_records(enumerate(inputs), guard.model, "request")
        except LMSanitatorError as exc:
            return reject(request, 400, str(exc))
        if state["in_flight"] > max_waiting:
            return reject(
                request, 503, f"{max_waiting} requests already wait for the model", **_retry(queue_wait)
            )

        def run():
            if not lock.acquire(timeout=queue_wait):
                raise _Busy
            try:
                state["busy_since"] = time.monotonic()
                return guard.predict(texts, pairs, deadline=time.monotonic() + deadline)
            finally:
                state["busy_since"] = None
                lock.release()

        state["in_flight"] += 1
        try:
            records = await run_in_threadpool(run)
        except asyncio.CancelledError:  # shutdown ran out of patience with this batch
            return reject(request, 503, "the service is shutting down")
        except _Busy:
            return reject(request, 503, f"the model stayed busy for {queue_wait} s", **_retry(queue_wait))
        except GuardDeadline as exc:
            return reject(request, 504, str(exc))
        except LMSanitatorError as exc:
            return reject(request, 400, str(exc))
        finally:
            state["in_flight"] -= 1
        flagged = sum(r["flagged"] for r in records)
        stats["requests"] += 1
        stats["inputs"] += len(records)
        stats["flagged"] += flagged
        ms = 1000 * (time.monotonic() - t0)
        log.info("POST /predict -> 200: %d inputs, %d flagged, %.0f ms", len(records), flagged, ms)
        return {"results": records}

    def openapi():
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            comps = doc.setdefault("components", {}).setdefault("schemas", {})
            s = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(s.pop("$defs", {}))
            comps["PredictRequest"] = s
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
    return app


def _one_line(record: logging.LogRecord) -> bool:
    """A logging filter: a record with an exception becomes its message and the exception's first line."""
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        first = str(exc).splitlines()[0] if str(exc) else ""
        record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__} {first}".rstrip(), None
        record.exc_info = record.exc_text = None
    return True


def _retry(seconds: float) -> dict:
    return {"Retry-After": str(max(1, round(seconds)))}


def serve(
    guard,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    **limits,
) -> None:
    """Run the app with uvicorn until SIGTERM / Ctrl-C; a batch still running after
    ``shutdown_timeout`` seconds is abandoned (the worker threads are daemons)."""
    import uvicorn  # noqa: PLC0415  heavy: optional service dependency

    if not log.handlers:  # one plain line per request, like uvicorn's own
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    config = uvicorn.Config(
        create_app(guard, **limits),
        host=host,
        port=port,
        log_level="info",
        access_log=False,  # the app logs each request itself, with the reason of a rejection
        timeout_graceful_shutdown=shutdown_timeout,
    )
    for name in ("uvicorn.error", "uvicorn"):  # uvicorn's own errors: one line each, no traceback
        logging.getLogger(name).addFilter(_one_line)
    try:
        uvicorn.Server(config).run()  # on SIGTERM uvicorn re-raises the signal once it has stopped
    finally:
        if config.app.state.model_lock.locked():
            # Ctrl-C with a batch still running in a worker thread, which Python would wait for at
            # exit (up to the deadline); nothing of the service needs flushing, so stop now
            log.warning("stopped with a batch still running: abandoned it")
            for h in log.handlers:
                h.flush()
            os._exit(130)
