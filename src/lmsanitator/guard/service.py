"""The guard as an HTTP service (FastAPI + uvicorn).

    POST /predict   {"inputs": [{"text": ..., "text_pair": ...} | {"tokens": [...]}, ...]}
                    -> {"results": [record, ...]}   (records as ``lmsanitator guard`` writes them)
    GET  /health    -> {"status": "ok", "model": ..., "pvs": N, ...}

Limits: bodies over ``max_body_bytes`` get 413, batches over ``max_batch`` inputs 413; bodies that
are not UTF-8 JSON, or records that are malformed, get 400 with ``{"error": "..."}``. The model runs
one request at a time (a lock; torch uses the cores inside one forward pass) in a worker thread,
so the event loop keeps answering ``/health`` and rejecting bad requests while a batch runs.
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` annotation

import json
import threading

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.inputs import parse_input_records

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_BODY_BYTES = 1 << 20


def create_app(guard, *, max_batch: int = DEFAULT_MAX_BATCH, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    app = FastAPI(title="LMSanitator guard", version="1")
    lock = threading.Lock()
    stats = {"requests": 0, "inputs": 0, "flagged": 0}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # a bug must not take the service down or leak a traceback
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            **guard.info(),
            "max_batch": max_batch,
            "max_body_bytes": max_body_bytes,
            **stats,
        }

    @app.post("/predict")
    async def predict(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return error(413, f"request body of {declared} bytes exceeds the limit of {max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():  # also bounds chunked bodies that declare no length
            body.extend(chunk)
            if len(body) > max_body_bytes:
                return error(413, f"request body exceeds the limit of {max_body_bytes} bytes")
        try:
            obj = json.loads(bytes(body).decode("utf-8"))
        except UnicodeDecodeError:
            return error(400, "request body is not UTF-8")
        except json.JSONDecodeError as exc:
            return error(400, f"request body is not valid JSON: {exc.msg} at position {exc.pos}")
        inputs = obj.get("inputs") if isinstance(obj, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return error(
                400, 'body must be a JSON object {"inputs": [{"text": ...}, ...]} with at least one input'
            )
        if len(inputs) > max_batch:
            return error(413, f"{len(inputs)} inputs exceed the batch limit of {max_batch}")
        try:
            texts, pairs = parse_input_records(enumerate(inputs), guard.model, "request")
        except LMSanitatorError as exc:
            return error(400, str(exc))

        def run():
            with lock:
                return guard.predict(texts, pairs)

        try:
            records = await run_in_threadpool(run)
        except LMSanitatorError as exc:
            return error(400, str(exc))
        stats["requests"] += 1
        stats["inputs"] += len(records)
        stats["flagged"] += sum(r["flagged"] for r in records)
        return {"results": records}

    return app


def serve(guard, host: str = "127.0.0.1", port: int = 8000, **limits) -> None:
    import uvicorn

    uvicorn.run(create_app(guard, **limits), host=host, port=port, log_level="info")
