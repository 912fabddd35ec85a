"""The FastAPI app: routes, bearer auth, body-size limit, one-line errors, NDJSON streaming, disconnects."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.resources import files

import torch
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import SelfieError
from ..interpret.describe import Description
from .inputs import decode_vectors, encode_tensor
from .limits import RequestError
from .scheduler import DescribeJob, Settings
from .schemas import AskRequest, CompareRequest, DescribeRequest, ExtractRequest, LensRequest, VectorInput
from .service import Service

log = logging.getLogger(__name__)
STATIC = files("selfie_adapters.serve") / "static"
POLL_S = 0.1  # how often a waiting request checks whether its client is still there


class ClientGone(Exception):
    """The client disconnected while its work was queued or running."""


def build_app(service: Service, *, token: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="selfie serve", lifespan=lifespan,
                  description="Ask a language model what its hidden states mean (SelfIE adapters).")
    app.add_middleware(BodyLimit, max_bytes=service.limits.max_body_bytes)
    install_error_handlers(app)
    app.include_router(api_routes(service), dependencies=[Depends(bearer_auth(token))])
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    return app


def api_routes(service: Service) -> APIRouter:
    """The JSON API: /info, /describe, /ask and /compare (vectors in), /extract and /lens (prompts in)."""
    router = APIRouter()
    describe_routes(router, service)
    prompt_routes(router, service)
    return router


def describe_routes(router: APIRouter, service: Service) -> None:
    @router.get("/info")
    async def info() -> dict:
        """Model, adapter, template, dimensions, layers, limits and load."""
        return service.info()

    @router.post("/describe", response_model=None)
    async def describe(req: DescribeRequest, request: Request) -> dict | Response:
        """Describe vectors (JSON floats or base64 fp32) or prompt states; rows as `selfie describe` writes."""
        mode = service.mode(req.mode)

        def settings_for(n: int) -> Settings:  # checked before any model work
            return service.settings(mode, req.scales, req.samples, n, **req.generation())

        vectors = await source_vectors(service, req, request, settings_for)
        settings = settings_for(len(vectors))
        job = service.describe(vectors, settings, mode)
        head = {"mode": mode, "scales": list(settings.scales)}
        if req.stream:
            return ndjson(request, job, lambda d: d.to_row(), rescore=lambda rows: service.scored(rows, vectors))
        rows = await until_disconnect(request, job.collect(), job.cancel)
        scored = await until_disconnect(request, service.scored([d.to_row() for d in rows], vectors, mark=True))
        return {**head, "rows": scored}

    @router.post("/ask", response_model=None)
    async def ask(req: AskRequest, request: Request) -> dict | Response:
        """Ask vectors or prompt states a question: free answers, or ``choices`` scored; rows as `selfie ask`."""
        mode = service.mode(req.mode)

        def settings_for(n: int) -> Settings:  # checked before any model work
            base = service.settings(mode, req.scales, req.samples, n, **req.generation())
            return service.ask_settings(mode, base, req.question, req.choices, req.answer_prefix)

        vectors = await source_vectors(service, req, request, settings_for)
        settings = settings_for(len(vectors))
        job = service.describe(vectors, settings, mode)
        if req.stream:
            return ndjson(request, job, lambda a: a.to_row())
        rows = await until_disconnect(request, job.collect(), job.cancel)
        return {"mode": mode, "scales": list(settings.scales), "rows": [a.to_row() for a in rows]}

    @router.post("/compare")
    async def compare(req: CompareRequest, request: Request) -> dict:
        """Describe the difference a − b of two vectors or prompt states."""
        mode = service.mode(req.mode)
        settings = service.settings(mode, req.scales, req.samples, 1, **req.generation())

        def one(n: int) -> None:
            if n != 1:
                raise RequestError(f"'a' and 'b' must each be one vector or one prompt state, got {n} vectors")

        a = await source_vectors(service, req.a, request, one, "a")
        b = await source_vectors(service, req.b, request, one, "b")
        job = service.describe(a - b, settings, mode)
        rows = await until_disconnect(request, job.collect(), job.cancel)
        scored = await until_disconnect(request, service.scored([d.to_row() for d in rows], a - b, mark=True))
        return {"mode": mode, "scales": list(settings.scales), "norm": float((a - b).norm()), "rows": scored}


def prompt_routes(router: APIRouter, service: Service) -> None:
    @router.post("/extract")
    async def extract(req: ExtractRequest, request: Request) -> dict:
        """Hidden states: {"layer_L": {"shape", "values" | "b64"}} (one position → (N, d), several → (N, P, d))."""
        prompts = [req.prompts] if isinstance(req.prompts, str) else req.prompts
        layers = [req.layers] if isinstance(req.layers, int) else req.layers
        chat = service.use_chat(req.chat)
        states = await until_disconnect(request, service.extract(prompts, layers, req.positions, chat))
        return {"layers": {f"layer_{L}": encode_tensor(v, req.encoding) for L, v in states.items()}}

    @router.post("/lens", response_model=None)
    async def lens(req: LensRequest, request: Request) -> dict | Response:
        """Layers × tokens grid of descriptions of one prompt, from one forward pass for all layers."""
        mode = service.mode(req.mode)
        layers = list(range(service.n_layers)) if req.layers is None else req.layers
        scale = req.scale if req.scale is not None else service.lens_scale(mode)
        settings = service.settings(mode, [scale], req.samples, 1, **req.generation())
        chat = service.use_chat(req.chat)
        header, job = await until_disconnect(request, service.lens(req.prompt, layers, settings, mode, chat))
        P = len(header["positions"])

        def cell(d: Description) -> dict:
            return {"row": d.index // P, "col": d.index % P, **d.to_row()}

        if req.stream:
            return ndjson(request, job, cell, header)
        grid: list[list[list[dict]]] = [[[] for _ in range(P)] for _ in header["layers"]]
        for d in await until_disconnect(request, job.collect(), job.cancel):
            grid[d.index // P][d.index % P].append(d.to_row())
        return {**header, "grid": [[{"label": c[0]["label"], "logprob": c[0]["logprob"], "samples": c} for c in row]
                                   for row in grid]}


async def source_vectors(service: Service, src: VectorInput, request: Request, check: Callable[[int], object],
                         field: str = "vectors") -> torch.Tensor:
    """(N, d) vectors of a request: decoded floats (minus the layer mean if ``layer`` is set) or prompt states.

    ``check(N)`` runs before any model work (limits).
    """
    if src.prompt is None:
        vectors = decode_vectors(src.vectors, src.vectors_b64, service.dim,
                                 "vectors" if field == "vectors" else f"{field}.vectors")
        check(len(vectors))
        return vectors if src.layer is None else service.contrast(vectors, service.request_layers([src.layer])[0])
    if src.vectors is not None or src.vectors_b64 is not None:
        raise RequestError(f"'{field}': give either vectors or a prompt, not both")
    if src.layer is None:
        raise RequestError(f"'{field}': a prompt needs 'layer' (the state after block L is described)")
    prompts = [src.prompt] if isinstance(src.prompt, str) else src.prompt
    check(len(prompts) * (1 if isinstance(src.position, int) else len(src.position)))
    chat = service.use_chat(src.chat)
    return await until_disconnect(request, service.prompt_vectors(prompts, src.layer, src.position, chat))


async def until_disconnect(request: Request, work: Awaitable, on_cancel: Callable[[], None] | None = None):
    """Await ``work``; if the client disconnects first, cancel it (and call ``on_cancel``) and raise ClientGone."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
            if on_cancel is not None:
                on_cancel()


def ndjson(request: Request, job: DescribeJob, row: Callable[[Description], dict],
           header: dict | None = None,
           rescore: Callable[[list[dict]], Awaitable[list[dict]]] | None = None) -> StreamingResponse:
    """Stream ``header`` then one JSON line per description as batches finish (``rescore`` adds each
    batch's round-trip scores); an error ends with {"error"}."""

    async def lines() -> AsyncIterator[str]:
        rows = job.stream().__aiter__()
        try:
            if header is not None:
                yield json.dumps(header) + "\n"
            while True:
                try:
                    chunk = await until_disconnect(request, rows.__anext__())
                except StopAsyncIteration:
                    return
                out = [row(d) for d in chunk]
                if rescore is not None:
                    out = await until_disconnect(request, rescore(out))
                yield "".join(json.dumps(r) + "\n" for r in out)
        except ClientGone:
            return
        except Exception as e:  # headers are sent: report in-band, one line
            yield json.dumps({"error": one_line(e)}) + "\n"
        finally:
            job.cancel()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def bearer_auth(token: str | None) -> Callable:
    async def check(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
    return check


class BodyLimit:
    """ASGI middleware: 413 for request bodies over ``max_bytes`` (by Content-Length or while reading)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body over {self.max_bytes} bytes (server flag --max-body-mb)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await error_response(413, message)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, message)
            return msg

        await self.app(scope, limited, send)


def install_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": "<one line>"}`` with a 4xx status (5xx only for server bugs)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", first.get("msg"))
            return error_response(400, f"malformed JSON: {detail}")
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type:
            return error_response(415, f"send the body as JSON with 'Content-Type: application/json' (curl: --json "
                                       f"'{{...}}'), got content type {content_type or 'none'!r}")
        # drop pydantic's union-branch tags such as 'list[list[float]]' from the location
        where = ".".join(str(p) for p in first.get("loc", ())[1:] if "[" not in str(p)) or "body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return error_response(422, f"{where}: {first.get('msg')}{more}")

    @app.exception_handler(SelfieError)
    async def bad_input(request: Request, exc: SelfieError) -> JSONResponse:
        return error_response(getattr(exc, "status", 400), str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; the work was cancelled

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def one_line(e: Exception | str) -> str:
    return " ".join(str(e).split())
