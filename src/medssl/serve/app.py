"""The web service of `medssl serve`: a FastAPI app over one loaded Engine.

Routes: `GET /` (the page: drop an image, see it, the heat map, the findings and the draft reports),
`GET /healthz`, `GET /v1/model`, `POST /v1/analyze` (multipart field `file`: a DICOM, PNG or JPEG), with a PACS
(`medssl serve --pacs URL`) `POST /v1/studies/{study_uid}/analyze` (the study pulled into memory over DICOMweb, never
to disk: pacs.pull.study_images), and FastAPI's `/openapi.json` and `/docs`. Inference runs in a bounded thread pool (`workers` threads, at most `queue` requests
waiting: more get 503), so the event loop keeps answering and requests never share mutable state.

Access: with a token (`--token-file` or MEDSSL_TOKEN), every route but `/healthz` and the page's static shell
needs `Authorization: Bearer TOKEN`, compared in constant time; a wrong or missing token gets 401 with no detail.
The page holds no data: it asks for the token once and sends it with each API call.

Errors are JSON: `{"error": {"status", "message"}, "request_id"}`. Each request leaves one audit line on the
`medssl.audit` logger: time, request id, method, route, status, latency; never a query string, a header, a file
name or anything of the image.
"""

import asyncio
import hmac
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medssl.errors import MedsslError, PacsError
from medssl.serve.engine import Engine
from medssl.serve.page import PAGE

AUDIT = logging.getLogger("medssl.audit")
UPLOAD_TYPES = ("application/dicom", "image/png", "image/jpeg", "image/jpg", "application/octet-stream",
                "image/dicom", "")
PUBLIC = ("/healthz", "/", "/favicon.ico")


def _error(status: int, message: str, request_id: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}, "request_id": request_id},
                        status_code=status, headers={"X-Request-ID": request_id})


# what a PACS failure answers: the study is not there (404), holds nothing to read (422), the PACS is down or
# refuses medssl (502), or is too slow (504)
PACS_STATUS = {"not_found": 404, "no_images": 422, "timeout": 504}


def create_app(engine: Engine, token: str | None = None, max_bytes: int = 20 * 2 ** 20, workers: int = 2,
               queue: int = 16, pacs: Any = None) -> FastAPI:
    """The FastAPI app; `token` None = no authentication (loopback only, which the CLI enforces); `pacs` a
    pacs.client.Pacs for the study route."""
    app = FastAPI(title="medssl", version=str(engine.describe().get("medssl")),
                  description="Findings, draft reports and similar cases for a chest radiograph. Every answer is "
                              "a draft for a radiologist's review, not a diagnosis.")
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="medssl-infer")
    slots = threading.BoundedSemaphore(max(1, workers) + max(0, queue))
    expected = token.encode() if token else None

    async def in_pool(rid: str, status_of: Any, work: Any, *args: Any) -> Any:
        """work(*args) in the inference pool when a slot is free (else 503); its answer with the request id, or
        a MedsslError as JSON with the status status_of(error) gives."""
        if not slots.acquire(blocking=False):
            return _error(503, "busy: too many requests waiting; retry shortly", rid)
        try:
            result = await asyncio.get_running_loop().run_in_executor(pool, work, *args)
        except MedsslError as e:
            return _error(status_of(e), str(e).splitlines()[0], rid)
        finally:
            slots.release()
        result["request_id"] = rid
        return result

    @app.middleware("http")
    async def audit_and_auth(request: Request, call_next):
        rid = uuid.uuid4().hex[:16]
        request.state.rid = rid
        t0 = time.perf_counter()
        status = 500
        try:
            if expected is not None and request.url.path not in PUBLIC:
                given = request.headers.get("authorization", "")
                scheme, _, value = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
                    status = 401
                    return _error(401, "unauthorized", rid)
            try:
                response = await call_next(request)
            except Exception as e:  # noqa: BLE001 - one JSON answer and one log line, no traceback
                logging.getLogger("medssl.serve").error("internal error %s (rid=%s)", type(e).__name__, rid)
                status = 500
                return _error(500, "internal error", rid)
            response.headers["X-Request-ID"] = rid
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            AUDIT.info("%s rid=%s %s %s status=%d ms=%.1f", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       rid, request.method, getattr(route, "path", None) or "(unmatched)", status,
                       1000 * (time.perf_counter() - t0))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(request.state, "rid", "-"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        fields = sorted({".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in exc.errors()})
        return _error(422, f"missing or invalid: {', '.join(fields)} (send the image as multipart field 'file')",
                      getattr(request.state, "rid", "-"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.replace("__AUTH__", "true" if expected is not None else "false")
                            .replace("__PACS__", "true" if pacs is not None else "false"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the models are loaded and the service answers."""
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """What is loaded, trained on what, and its test metrics."""
        out = engine.describe()
        if pacs is not None:
            out["pacs"] = {"url": pacs.url, "auth": pacs.auth}
        return out

    @app.post("/v1/analyze")
    async def analyze(request: Request, file: UploadFile = File(..., description="a DICOM, PNG or JPEG image"),
                      k: int = 5, heatmap: bool = True):
        """Findings with probabilities, the generated and the retrieval-based draft reports (with source sentences),
        the most similar cases of the run's index, and a Grad-CAM overlay (a PNG data URL)."""
        rid = request.state.rid
        if (file.content_type or "").split(";")[0].strip().lower() not in UPLOAD_TYPES:
            return _error(415, f"unsupported upload type {file.content_type!r}: send a DICOM, PNG or JPEG", rid)
        if not 1 <= k <= 50:
            return _error(422, f"k={k}: must lie in 1..50", rid)
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            return _error(413, f"upload larger than {max_bytes // 2 ** 20} MB", rid)
        if not data:
            return _error(400, "empty upload", rid)
        return await in_pool(rid, lambda e: 415, engine.analyze, data, "upload", k, heatmap)

    @app.post("/v1/studies/{study_uid}/analyze")
    async def analyze_study(request: Request, study_uid: str, k: int = 5, heatmap: bool = True):
        """A study of the PACS by its Study Instance UID: findings, heat map and similar cases of its frontal view,
        draft reports from its views. Needs `medssl serve --pacs URL`."""
        rid = request.state.rid
        if pacs is None:
            return _error(404, "no PACS: start the service with --pacs URL to analyse studies by UID", rid)
        if not 1 <= k <= 50:
            return _error(422, f"k={k}: must lie in 1..50", rid)
        from medssl.pacs.pull import study_images

        def work() -> dict[str, Any]:
            result = engine.analyze_study(study_images(pacs, study_uid), k, heatmap)
            result["study"] = {"uid": study_uid, **result.get("study", {})}
            return result

        return await in_pool(rid, lambda e: PACS_STATUS.get(e.kind, 502) if isinstance(e, PacsError) else 422, work)

    app.state.pool = pool
    return app
