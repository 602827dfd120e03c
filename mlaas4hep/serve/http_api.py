"""HTTP layer of the service: the registry and bulk endpoints, auth and body limits.

``serving/service.py`` mounts :func:`build_app` (Starlette routes, GET/DELETE included,
which ``@bentoml.api`` methods cannot be) and installs :class:`GuardMiddleware` in front
of every route. The handlers are thin: they read the request, call the
:class:`~mlaas4hep.serve.server.ModelServer` or the :class:`~mlaas4hep.serve.registry.Registry`
(in a thread when the work is blocking) and turn every refusal into a JSON body
``{"error", "field", "problem"}`` with a 4xx status (:func:`error_response`).

Auth: mutating registry endpoints (POST/DELETE under ``/models`` and ``/aliases``) need
``Authorization: Bearer <token>``; with no token configured they are refused (403), so
a service never runs with a default token. Prediction and every read endpoint
(``/status``, the model cards and ``/metrics`` included) need it only with
``predict_requires_token``; health and readiness (:data:`OPEN_PATHS`) stay open, and
``/metrics`` too with ``open_metrics`` (a scraper that cannot send a token). A read answered without
the token is redacted (:func:`~mlaas4hep.serve.registry_documents.redact`: no bucket
paths, hosts or credential-like settings).

Limits: a body larger than the endpoint's limit gets a 413 before it is parsed (by its
``Content-Length``, or counted as it arrives when chunked).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mlaas4hep import __version__
from mlaas4hep.errors import BranchError, ConfigError, MlaasError, ReadError
from mlaas4hep.serve import registry_page
from mlaas4hep.serve.answers import negotiate
from mlaas4hep.serve.config import ServeConfig
from mlaas4hep.serve.open_inference import HEADER_LENGTH
from mlaas4hep.serve.payloads import RequestError, decimal_length
from mlaas4hep.serve.predictor import UnsafeBundleError
from mlaas4hep.serve.protocol import ARROW_STREAM, DEFAULT_ALIAS, JSON
from mlaas4hep.serve.registry_documents import redact
from mlaas4hep.serve.registry_errors import RegistryError
from mlaas4hep.serve.server import ModelServer

log = logging.getLogger("mlaas4hep.serving")
DRAIN_BYTES = 64 << 20  # read (and drop) this much of a refused body so the client sees the answer
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REGISTRY_PREFIXES = ("/models", "/aliases")
#: What a load balancer reads: never behind the token.
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})
METRICS = "/metrics"


def error_response(err: BaseException) -> JSONResponse:
    """The JSON error response for an exception raised while serving a request."""
    status, payload = error_payload(err)
    return JSONResponse(payload, status_code=status)


def error_payload(err: BaseException) -> tuple[int, dict[str, Any]]:
    if isinstance(err, (RequestError, RegistryError)):
        return err.status, err.payload()
    if isinstance(err, UnsafeBundleError):
        return 422, {"error": str(err), "field": "model", "problem": str(err)}
    if isinstance(err, (BranchError, ReadError, ConfigError)):
        field = getattr(err, "branch", None) or getattr(err, "url", None)
        return 422, {"error": str(err), "field": field, "problem": str(err)}
    if isinstance(err, MlaasError):
        return 400, {"error": str(err), "field": None, "problem": str(err)}
    log.exception("unexpected error while serving a request", exc_info=err)
    return 500, {"error": "an unexpected error occurred; see the server log", "field": None}


def _handled(
    handler: Callable[[Request, ModelServer], Awaitable[Response]],
    get_server: Callable[[], ModelServer],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, get_server())
        except Exception as err:
            return error_response(err)

    endpoint.__name__ = handler.__name__
    return endpoint


# ------------------------------------------------------------------------------ routes


async def predict_arrow(request: Request, server: ModelServer) -> Response:
    started = time.perf_counter()
    body = await read_body(request)
    received = time.perf_counter()
    accept = negotiate(request.headers.get("accept", ""), ARROW_STREAM)
    media = request.headers.get("content-type", "")
    pieces, kind, tag = await run_in_threadpool(server.predict_table, body, media, accept)
    del body
    return _streamed(pieces, kind, _headers(tag, started, received))


async def predict_file(request: Request, server: ModelServer) -> Response:
    started = time.perf_counter()
    accept = negotiate(request.headers.get("accept", ""), JSON)
    tree = request.query_params.get("tree")
    source: str | bytes | bytearray
    if request.headers.get("content-type", "").split(";")[0].strip() == JSON:
        spec = _json_object(await request.body())
        if not isinstance(spec.get("url"), str):
            raise RequestError(
                "give the file as {'url': 's3://…, root://… or https://…'}", field="url"
            )
        source, tree = spec["url"], spec.get("tree", tree)
    elif "url" in request.query_params:
        source = request.query_params["url"]
    else:
        source = await read_body(request)
        if not source:
            raise RequestError("empty body: upload a ROOT file or give a url", field="body")
    received = time.perf_counter()
    pieces, kind, tag = await run_in_threadpool(server.predict_file, source, accept, tree)
    del source
    return _streamed(pieces, kind, _headers(tag, started, received))


#: Bodies up to this size are read with ``Request.body`` (its pieces joined once).
SMALL_BODY = 64 * 1024


async def read_body(request: Request) -> bytes | bytearray:
    """The request body, read into one buffer (sized by ``Content-Length`` when given)
    so that a bulk body is held once, not as its pieces and their join."""
    length = decimal_length(request.headers.get("content-length", ""))
    if length is None:
        return await request.body()
    if length <= SMALL_BODY:  # one piece, as a one-event request is: no copy loop
        body = await request.body()
        if len(body) != length:
            raise RequestError(
                f"the body has {len(body)} bytes, not its Content-Length {length}", field="body"
            )
        return body
    buffer = bytearray(length)
    view, filled = memoryview(buffer), 0
    async for piece in request.stream():
        end = filled + len(piece)
        if end > len(buffer):
            raise RequestError("the body is longer than its Content-Length", field="body")
        view[filled:end] = piece
        filled = end
    if filled != len(buffer):
        raise RequestError(
            f"the body ended after {filled} of its {len(buffer)} bytes", field="body"
        )
    view.release()
    return buffer


def _streamed(pieces: Iterator[bytes], kind: str, headers: dict[str, str]) -> Response:
    """A response sent piece by piece (the scores of a bulk request are never one str)."""
    return StreamingResponse(iterate_in_threadpool(pieces), media_type=kind, headers=headers)


def _headers(tag: str, started: float, received: float) -> dict[str, str]:
    """The model tag, and where the time went (``Server-Timing``: body upload, scoring)."""
    done = time.perf_counter()
    timing = f"body;dur={(received - started) * 1e3:.1f}, score;dur={(done - received) * 1e3:.1f}"
    return {"X-Model-Tag": tag, "Server-Timing": timing}


#: Set by :class:`GuardMiddleware` in the ASGI scope: the caller sent the valid token.
AUTHORIZED = "mlaas4hep.authorized"


def _for_caller(request: Request, document: Any) -> Any:
    """``document`` as the caller may read it: whole with the token, else redacted
    (no bucket paths, hosts or credential-like settings)."""
    return document if request.scope.get(AUTHORIZED) else redact(document)


async def status(request: Request, server: ModelServer) -> Response:
    return JSONResponse(_for_caller(request, server.status()))


async def list_models(request: Request, server: ModelServer) -> Response:
    query = request.query_params
    labels = {}
    for item in query.getlist("label"):
        key, sep, value = item.partition("=")
        if not sep:
            raise RequestError(f"label filter {item!r}: write it as key=value", field="label")
        labels[key] = value
    models = await run_in_threadpool(
        server.registry.list,
        query.get("name") or None,
        labels=labels,
        dataset=query.get("dataset") or None,
        metrics=query.getlist("metric"),
        created_after=query.get("created_after"),
        created_before=query.get("created_before"),
        alias=query.get("alias") or None,
    )
    return JSONResponse({"models": _for_caller(request, models), "serving": server.tag})


async def card(request: Request, server: ModelServer) -> Response:
    document = await run_in_threadpool(server.registry.card, request.path_params["ref"])
    return JSONResponse(_for_caller(request, document))


async def upload_model(request: Request, server: ModelServer) -> Response:
    body = await request.body()
    if not body:
        raise RequestError("empty body: send a .bentomodel or a tar of a bundle", field="body")
    tag = await run_in_threadpool(
        server.registry.upload,
        body,
        request.query_params.get("name") or None,
        max_unpacked_bytes=server.config.limits.model_unpacked_bytes,
    )
    return JSONResponse({"tag": tag, "card": f"/models/{tag}"}, status_code=201)


async def delete_model(request: Request, server: ModelServer) -> Response:
    tag = await run_in_threadpool(server.registry.delete, request.path_params["ref"])
    return JSONResponse({"deleted": tag})


async def promote(request: Request, server: ModelServer) -> Response:
    alias: Any = request.query_params.get("alias")
    body = await request.body()
    if body:
        alias = _json_object(body).get("alias", alias)
    if alias is None:  # not given: the default; given, it must say something
        alias = DEFAULT_ALIAS
    elif not isinstance(alias, str) or not alias.strip():
        raise RequestError("alias must be a non-empty string", field="alias")
    tag = await run_in_threadpool(server.registry.promote, request.path_params["ref"], alias)
    await run_in_threadpool(server.refresh)  # this worker switches now, the others on poll
    return JSONResponse({"tag": tag, "alias": alias, "serving": server.tag})


async def aliases(request: Request, server: ModelServer) -> Response:
    return JSONResponse({"aliases": await run_in_threadpool(server.registry.aliases)})


async def remove_alias(request: Request, server: ModelServer) -> Response:
    name, alias = request.path_params["name"], request.path_params["alias"]
    tag = await run_in_threadpool(server.registry.remove_alias, name, alias)
    return JSONResponse({"removed": f"{name}:{alias}", "was": tag})


# ------------------------------------------------- Open Inference Protocol (KServe v2)


async def v2_server(request: Request, server: ModelServer) -> Response:
    extensions = ["binary_tensor_data"]
    return JSONResponse({"name": "mlaas4hep", "version": __version__, "extensions": extensions})


async def v2_live(request: Request, server: ModelServer) -> Response:
    return Response(status_code=200)


async def v2_ready(request: Request, server: ModelServer) -> Response:
    return Response(status_code=200 if server.ready() else 503)


async def v2_model(request: Request, server: ModelServer) -> Response:
    params = request.path_params
    document = server.model_metadata(params["name"], params.get("version"))
    return JSONResponse(document)


async def v2_model_ready(request: Request, server: ModelServer) -> Response:
    server.model_metadata(request.path_params["name"], request.path_params.get("version"))
    return Response(status_code=200)  # a 503 (nothing loaded) or a 404 (another model) else


async def v2_infer(request: Request, server: ModelServer) -> Response:
    body = await read_body(request)
    params = request.path_params
    length = request.headers.get(HEADER_LENGTH)
    arguments = (body, length, params["name"], params.get("version"))
    if len(body) <= server.config.limits.json_bytes:  # a /predict-sized body: batched
        content, headers, kind = await server.infer_batched(*arguments)
    else:
        content, headers, kind = await run_in_threadpool(server.infer, *arguments)
    del body, arguments
    return Response(content, media_type=kind, headers=headers)


# ---------------------------------------------------------------------- registry page


async def ui_index(request: Request, server: ModelServer) -> Response:
    def render() -> str:
        models = _for_caller(request, server.registry.list())
        return registry_page.index_page(models, server.registry.aliases(), server.tag)

    return HTMLResponse(await run_in_threadpool(render))


async def ui_card(request: Request, server: ModelServer) -> Response:
    document = await run_in_threadpool(server.registry.card, request.path_params["ref"])
    return HTMLResponse(registry_page.card_page(_for_caller(request, document)))


async def ui_plot(request: Request, server: ModelServer) -> Response:
    name = request.path_params["name"]

    def read() -> bytes:
        tag = server.registry.resolve(request.path_params["ref"])
        folder = server.registry.path(tag) / "plots"
        path = folder / name
        if not _PLOT.fullmatch(name) or path.is_symlink() or not path.is_file():
            raise RequestError(f"model {tag} has no plot {name[:80]!r}", field="name", status=404)
        return path.read_bytes()

    return Response(await run_in_threadpool(read), media_type="image/png")


_PLOT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}\.png")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"the body is not valid JSON: {err}", field="body") from None
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object", field="body")
    return data


class MountedApp(Starlette):
    """The routes of :func:`build_app` without a middleware stack of their own.

    The app is mounted inside the service's app, whose error and exception middleware
    (and the guard) every request has passed already; every endpoint maps its own
    errors (:func:`_handled`). Its own ``ServerErrorMiddleware`` and
    ``ExceptionMiddleware`` cost a one-event request more than its routing. (A Starlette
    still, so that BentoML mounts it passively: it claims only the paths it routes.)
    """

    def build_middleware_stack(self) -> Any:
        return self.router


def build_app(get_server: Callable[[], ModelServer]) -> Starlette:
    """The Starlette app of the registry and bulk endpoints (mounted by the service)."""

    def route(path: str, handler: Any, method: str) -> Route:
        return Route(path, _handled(handler, get_server), methods=[method])

    infer = [  # first: every request to the mount is matched against the routes in order,
        # twice (BentoML's PassiveMount, then this app's router); one-event OIP requests
        # are the many (their search: 2 µs, not 18, each time)
        route(f"/v2/models/{{name}}{version}/infer", v2_infer, "POST")
        for version in ("", "/versions/{version}")
    ]
    return MountedApp(
        routes=[
            *infer,
            route("/predict_arrow", predict_arrow, "POST"),
            route("/predict_file", predict_file, "POST"),
            route("/status", status, "GET"),
            route("/models", list_models, "GET"),
            route("/models", upload_model, "POST"),
            route("/models/{ref}", card, "GET"),
            route("/models/{ref}", delete_model, "DELETE"),
            route("/models/{ref}/promote", promote, "POST"),
            route("/aliases", aliases, "GET"),
            route("/aliases/{name}/{alias}", remove_alias, "DELETE"),
            route("/ui", ui_index, "GET"),
            route("/ui/models/{ref}", ui_card, "GET"),
            route("/ui/models/{ref}/plots/{name}", ui_plot, "GET"),
            route("/v2", v2_server, "GET"),
            route("/v2/health/live", v2_live, "GET"),
            route("/v2/health/ready", v2_ready, "GET"),
            *[
                route(f"/v2/models/{{name}}{version}{leaf}", handler, method)
                for version in ("", "/versions/{version}")
                for leaf, handler, method in (
                    ("", v2_model, "GET"),
                    ("/ready", v2_model_ready, "GET"),
                )
            ],
        ]
    )


# -------------------------------------------------------------------------- middleware


class GuardMiddleware:
    """ASGI middleware: bearer-token checks and body-size limits, per endpoint."""

    def __init__(self, app: Any, config: ServeConfig) -> None:
        self.app = app
        self.config = config
        self._token = config.token.encode() if config.token else None

    def policy(self, method: str, path: str) -> tuple[int, bool]:
        """(body limit in bytes, whether a token is needed) for a request."""
        limits = self.config.limits
        open_reads = not self.config.predict_requires_token
        if path == "/predict":
            return limits.json_bytes, not open_reads
        if path == "/predict_arrow":
            return limits.bulk_bytes, not open_reads
        if path == "/predict_file":
            return limits.file_bytes, not open_reads
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            return limits.bulk_bytes, not open_reads
        if path.startswith(REGISTRY_PREFIXES):
            if method in MUTATING:
                return limits.model_bytes, True
            return limits.json_bytes, not open_reads
        if path in OPEN_PATHS:
            return limits.json_bytes, False
        if path == METRICS:
            return limits.json_bytes, not (open_reads or self.config.open_metrics)
        return limits.json_bytes, not open_reads  # /status and every other read

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit, needs_token = self.policy(method, path)
        length: int | None = None
        authorization = b""
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = decimal_length(value)
            elif key == b"authorization":
                authorization = value
        refusal = self._check_token(authorization) if needs_token or authorization else None
        if needs_token and refusal is not None:
            await _drain(receive)
            await _send_json(send, *refusal)
            return
        scope[AUTHORIZED] = bool(authorization) and self._token is not None and refusal is None
        if length is not None:
            if length > limit:
                await _drain(receive)
                await _send_json(send, 413, _too_large(path, limit, f"{length} bytes"))
                return
        elif method in MUTATING:  # chunked: count what arrives, replay it if within the limit
            body, over = await _read_limited(receive, limit)
            if over:
                await _drain(receive)
                await _send_json(send, 413, _too_large(path, limit, "a chunked body"))
                return
            receive = _replay(body, receive)
        if path == "/predict":  # BentoML's own refusals (the body's JSON) in our shape
            send = _uniform_refusals(send)
        await self.app(scope, receive, send)

    def _check_token(self, authorization: bytes) -> tuple[int, dict[str, Any]] | None:
        if self._token is None:
            problem = (
                "this endpoint needs a token and the server has none configured: set "
                "MLAAS4HEP_SERVE_TOKEN (or token in the serving config) to enable it"
            )
            return 403, {"error": problem, "field": "authorization", "problem": problem}
        scheme_, _, given = authorization.partition(b" ")
        if scheme_.lower() != b"bearer" or not given:
            problem = "missing token: send 'Authorization: Bearer <token>'"
            return 401, {"error": problem, "field": "authorization", "problem": problem}
        if not hmac.compare_digest(given.strip(), self._token):
            problem = "invalid token"
            return 401, {"error": problem, "field": "authorization", "problem": problem}
        return None


def _uniform_refusals(send: Any) -> Any:
    """A ``send`` that rewrites BentoML's 4xx answers to a ``/predict`` body it could not
    parse (pydantic's ``{"error", "detail": [...]}``: invalid JSON, nesting too deep, a
    number out of range) as ``{"error", "field", "problem"}``; every other message,
    successful answers included, passes through untouched."""
    held: dict[str, Any] | None = None
    body = bytearray()

    async def uniform(message: dict[str, Any]) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            if 400 <= message["status"] < 500:
                held = message
                return
            await send(message)
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        data = bytes(body)
        try:
            answer = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            answer = None
        if isinstance(answer, dict) and "field" not in answer:
            details = answer.get("detail") if isinstance(answer.get("detail"), list) else []
            first = details[0] if details and isinstance(details[0], dict) else {}
            problem = str(first.get("msg") or answer.get("error") or "the body was refused")
            location = ".".join(str(part) for part in first.get("loc") or [])
            field = location or "body"
            data = json.dumps(
                {"error": f"{field}: {problem}", "field": field, "problem": problem}
            ).encode()
            headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
            held = {**held, "headers": [*headers, (b"content-length", str(len(data)).encode())]}
        await send(held)
        await send({"type": "http.response.body", "body": data})

    return uniform


def _too_large(path: str, limit: int, what: str) -> dict[str, Any]:
    problem = f"{what} exceed(s) the limit of {limit} bytes for {path}"
    return {"error": f"body: {problem}", "field": "body", "problem": problem}


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="mlaas4hep"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Any) -> None:
    seen = 0
    while seen <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _read_limited(receive: Any, limit: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A ``receive`` that gives the buffered body, then the client's own messages."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
