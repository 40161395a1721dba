"""The HTTP front of MultiTaskModel: many task adapters behind one endpoint, batched across tasks.

    peftkit serve --adapter sentiment=runs/a --adapter ner=runs/b [--model PATH] [--port 8000]

A FastAPI app (pydantic request/response models, so ``/docs`` shows the schema) served by
uvicorn. ``POST /predict`` tokenizes and checks each row in the request handler, then queues the
rows in the cross-task BatchingQueue (peftkit/serving/batching.py), whose worker thread runs
them, mixed with other requests' rows of any task, as one MultiTaskModel forward. Every answer
equals what that task's own PeftModel gives for the same input (tests/serving/test_app.py fires
hundreds of concurrent requests over four tasks and checks each one).

Adapters are loaded and removed at run time (``POST /adapters``, ``DELETE /adapters/{name}``) as
control operations in the same queue: the rows queued before one run on the old adapter set,
the rows after it on the new one, and a load that fails rebuilds the old set, so it is served
unchanged. Errors are JSON ``{"error": {"code": ..., "message": ...}}`` whose message names the
problem and the fix; a full queue answers 503 with Retry-After, a request that waited longer than
the timeout 504. Replicas hold no state between requests: run several behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from peftkit.errors import PeftkitError, RequestError
from peftkit.loading import ADAPTER_FILES
from peftkit.serving.batching import BatchingQueue
from peftkit.serving.multi_task import MultiTaskModel, check_task_name, load_task_adapter
from peftkit.serving.rows import (
    SERVED_KINDS,
    TOKEN_CLASSIFICATION,
    EncodedRow,
    TaskSpec,
    answer_row,
    encode_row,
    model_max_length,
    pad_rows,
    require_fast_tokenizer,
)

logger = logging.getLogger("peftkit.serving")

# -- request and response models ---------------------------------------------------------------


class TextInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr = Field(description="The text to classify or tag.")
    text_pair: StrictStr | None = Field(None, description="Second text, for tasks trained on pairs.")


class PredictRequest(BaseModel):
    """Either one row (``text`` [+ ``text_pair``]) or several (``inputs``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"task": "sentiment", "text": "a great film"}]})
    task: StrictStr = Field(description="Name of a served task (GET /tasks lists them).")
    text: StrictStr | None = Field(None, description="One text to classify or tag.")
    text_pair: StrictStr | None = Field(None, description="Its second text, for tasks trained on pairs.")
    inputs: list[TextInput] | None = Field(None, min_length=1, description="Several rows, answered in order.")
    truncate: bool = Field(False, description="Cut texts longer than the model reads instead of refusing them.")

    @model_validator(mode="after")
    def one_form(self) -> "PredictRequest":
        if (self.text is None) == (self.inputs is None):
            raise ValueError('send either "text" (one row) or "inputs" (a list of {"text": ...}), not both or neither')
        if self.inputs is not None and self.text_pair is not None:
            raise ValueError('with "inputs", put each "text_pair" inside its row')
        return self


class WordPrediction(BaseModel):
    text: str
    start: int = Field(description="Character offset of the word in the text sent (inclusive).")
    end: int = Field(description="Character offset just past the word.")
    label: str
    score: float = Field(description="Probability of the label.")


class EntityPrediction(BaseModel):
    type: str
    text: str
    start: int = Field(description="Character offset of the entity in the text sent (inclusive).")
    end: int = Field(description="Character offset just past the entity.")
    score: float = Field(description="Mean probability of its words' tags.")


class RowPrediction(BaseModel):
    label: str | None = Field(None, description="Text classification: the most probable label.")
    score: float | None = Field(None, description="Its probability.")
    probabilities: dict[str, float] | None = Field(None, description="Every label's probability.")
    entities: list[EntityPrediction] | None = Field(None, description="Token classification: the entities found.")
    words: list[WordPrediction] | None = Field(None, description="Token classification: each word's tag.")
    truncated: bool = Field(description="True when the text was cut to the model's length (\"truncate\": true).")


class PredictResponse(BaseModel):
    task: str
    kind: str
    predictions: list[RowPrediction]


class TaskInfo(BaseModel):
    name: str
    kind: Literal["text-classification", "token-classification"]
    labels: list[str]
    method: str
    bytes: int = Field(description="Size of the adapter's weights on disk.")
    text_pair: bool = Field(description="Whether the task takes pairs of texts.")


class TasksResponse(BaseModel):
    tasks: list[TaskInfo]


class HealthResponse(BaseModel):
    status: Literal["ok"]
    tasks: int
    queue_depth: int


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(description="The task name requests will use.")
    path: StrictStr = Field(description="Adapter directory on the server's disk (written by save_pretrained).")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- the served state ----------------------------------------------------------------------------


@dataclasses.dataclass
class QueuedRow:
    spec: TaskSpec
    row: EncodedRow


def _adapter_bytes(directory: Path) -> int:
    """The bytes of the files one task needs (``loading.ADAPTER_FILES``), as cost and compare count them."""
    return sum((directory / name).stat().st_size for name in ADAPTER_FILES if (directory / name).is_file())


class TaskServer:
    """The backbone, its tokenizer and the served tasks. The model and the task set change only
    inside ``add_task`` / ``remove_task``, which the app runs as BatchingQueue control
    operations, so never while a forward runs."""

    def __init__(self, backbone: torch.nn.Module, tokenizer, adapters: dict[str, str], *, max_length: int | None = None,
                 task_model_classes: dict[str, Any] | None = None):
        self.backbone = backbone.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length or model_max_length(tokenizer, backbone.config)
        self.task_model_classes = dict(task_model_classes or {})
        self.lock = threading.Lock()  # belt and braces: add/remove/run never overlap even if called directly
        loaded = [self._load(name, directory) for name, directory in adapters.items()]
        self.model = MultiTaskModel(backbone, [task for task, _ in loaded])  # refuses adapters that disagree
        self.specs: dict[str, TaskSpec] = {spec.name: spec for _, spec in loaded}

    @classmethod
    def from_paths(cls, adapters: dict[str, str], model: str | None = None, *, max_length: int | None = None) -> "TaskServer":
        """Load the backbone (``model``, else the one the first adapter records) and the adapters."""
        from transformers import AutoModel

        from peftkit.loading import base_model_of, load_processor, resolve_model_path

        if not adapters:
            raise PeftkitError("serve needs at least one adapter: --adapter NAME=DIR (repeat it for more tasks).")
        model_path = resolve_model_path(model or base_model_of(next(iter(adapters.values()))))
        try:
            backbone = AutoModel.from_pretrained(model_path)
        except (OSError, ValueError) as error:
            raise PeftkitError(f"cannot load the model in {model_path} ({error}); pass --model PATH to a saved model.") from None
        tokenizer = load_processor(model_path, "text-classification")
        return cls(backbone, tokenizer, adapters, max_length=max_length)

    def _load(self, name: str, directory: str):
        """Read one adapter and describe it; touches nothing served."""
        from peftkit.loading import read_task_info

        directory = Path(directory)  # a missing path or a file is named by read_adapter_config, the shared check
        task = load_task_adapter(self.backbone, name, directory, self.tokenizer, self.task_model_classes.get(name))
        info = read_task_info(directory)
        kind = info.get("kind") or (
            TOKEN_CLASSIFICATION if "TokenClassification" in type(task.head).__name__ else "text-classification"
        )
        if kind not in SERVED_KINDS:
            raise RequestError(f"{directory} is a {kind} adapter; the server answers text and token classification.",
                               status=400, code="bad_adapter")
        if kind == TOKEN_CLASSIFICATION:
            require_fast_tokenizer(self.tokenizer)
        labels = list(info.get("label_names") or [])
        if len(labels) != len(task.label_names):  # the head's own names, when the file records none
            labels = list(task.label_names)
        spec = TaskSpec(name, kind, tuple(labels), bool(info.get("is_pair", False)), task.method, _adapter_bytes(directory))
        return task, spec

    def add_task(self, name: str, directory: str) -> TaskSpec:
        """Serve one more adapter; on any failure the served set stays as it was."""
        with self.lock:
            if name in self.specs:
                raise RequestError(f"a task named {name!r} is already served; DELETE /adapters/{name} first or pick another name.",
                                   status=409, code="task_exists")
            old_tasks = self.model.tasks
            self.model.unload()  # adapters are read against the bare backbone (identity, LoRA keys)
            try:
                task, spec = self._load(name, directory)
                model = MultiTaskModel(self.backbone, [*old_tasks, task])
            except BaseException:
                self.model = MultiTaskModel(self.backbone, old_tasks)
                raise
            self.model, self.specs = model, {**self.specs, name: spec}
            return spec

    def remove_task(self, name: str) -> None:
        with self.lock:
            if name not in self.specs:
                raise RequestError(f"no task named {name!r} is served (served: {sorted(self.specs)}).", status=404, code="unknown_task")
            remaining = [task for task in self.model.tasks if task.name != name]
            self.model.unload()
            self.model = MultiTaskModel(self.backbone, remaining)
            self.specs = {key: spec for key, spec in self.specs.items() if key != name}

    def run_batch(self, rows: list[QueuedRow]) -> list[dict[str, Any]]:
        """One mixed-task forward over ``rows`` (any tasks); one answer per row."""
        with self.lock:
            gone = sorted({queued.spec.name for queued in rows if queued.spec.name not in self.specs})
            if gone:  # removed after the request was checked; the queue retries the other rows alone
                raise RequestError(f"task(s) {gone} were removed while the request waited; served now: "
                                   f"{sorted(self.specs)}.", status=404, code="unknown_task")
            device = next(self.backbone.parameters()).device
            batch = pad_rows(self.tokenizer, [queued.row for queued in rows], device)
            predictions = self.model(
                batch["input_ids"], batch.get("attention_mask"), [queued.spec.name for queued in rows],
                batch.get("token_type_ids"),
            )
        return [answer_row(queued.spec, prediction.logits, queued.row) for queued, prediction in zip(rows, predictions)]


# -- metrics -------------------------------------------------------------------------------------


class ServerMetrics:
    """Prometheus metrics in the app's own registry (several apps may live in one process)."""

    def __init__(self, queue_depth):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("peftkit_requests", "HTTP requests answered, by route and status.",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("peftkit_errors", "Requests answered with an error, by error code.", ["code"], registry=self.registry)
        self.rows = Counter("peftkit_predicted_rows", "Rows predicted, by task.", ["task"], registry=self.registry)
        self.batch_rows = Histogram("peftkit_batch_rows", "Rows per mixed-task forward.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_seconds = Histogram("peftkit_batch_seconds", "Seconds per mixed-task forward.", registry=self.registry)
        self.latency = Histogram("peftkit_request_latency_seconds", "Seconds from receiving a /predict request to answering it.",
                                 registry=self.registry)
        depth = Gauge("peftkit_queue_depth", "Rows waiting in the batching queue.", registry=self.registry)
        depth.set_function(queue_depth)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_rows.observe(size)
        self.batch_seconds.observe(seconds)


# -- the app -------------------------------------------------------------------------------------

router = APIRouter()
ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 409, 413, 422, 503, 504)}


def _state(request: Request):
    return request.app.state.peftkit


@router.get("/health", response_model=HealthResponse)
async def health(request: Request) -> HealthResponse:
    state = _state(request)
    return HealthResponse(status="ok", tasks=len(state.server.specs), queue_depth=state.queue.depth)


def _task_info(spec: TaskSpec) -> TaskInfo:
    return TaskInfo(name=spec.name, kind=spec.kind, labels=list(spec.label_names), method=spec.method,
                    bytes=spec.adapter_bytes, text_pair=spec.takes_pairs)


@router.get("/tasks", response_model=TasksResponse)
async def tasks(request: Request) -> TasksResponse:
    return TasksResponse(tasks=[_task_info(spec) for spec in _state(request).server.specs.values()])


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=ERRORS)
async def predict(body: PredictRequest, request: Request) -> PredictResponse:
    state = _state(request)
    spec = state.server.specs.get(body.task)
    if spec is None:
        raise RequestError(
            f"unknown task {body.task!r}: this server serves {sorted(state.server.specs)}; use one of them, or load "
            "an adapter for it with POST /adapters {\"name\": ..., \"path\": ...}.", status=404, code="unknown_task",
        )
    texts = [(body.text, body.text_pair)] if body.text is not None else [(row.text, row.text_pair) for row in body.inputs]
    if len(texts) > state.queue.max_queue_rows:
        raise RequestError(
            f"{len(texts)} inputs in one request, more than the queue holds ({state.queue.max_queue_rows}): split it "
            "into smaller requests.", status=413, code="too_many_inputs",
        )
    rows = []
    for index, (text, text_pair) in enumerate(texts):
        try:
            rows.append(encode_row(state.server.tokenizer, spec, text, text_pair,
                                   max_length=state.server.max_length, truncate=body.truncate))
        except RequestError as error:
            if body.inputs is not None:
                error.args = (f"inputs[{index}]: {error}",)
            raise
    futures = state.queue.submit([QueuedRow(spec, row) for row in rows])
    try:
        answers = await asyncio.wait_for(asyncio.gather(*futures), state.timeout_seconds)
    except TimeoutError:
        raise RequestError(
            f"the prediction took longer than the server's timeout ({state.timeout_seconds:g} s); the server is "
            "overloaded: retry later, send fewer inputs per request, or add replicas.", status=504, code="timeout",
        ) from None
    state.metrics.rows.labels(spec.name).inc(len(rows))
    return PredictResponse(task=spec.name, kind=spec.kind, predictions=[RowPrediction(**answer) for answer in answers])


@router.post("/adapters", response_model=TaskInfo, status_code=201, responses=ERRORS)
async def load_adapter(body: AdapterRequest, request: Request) -> TaskInfo:
    state = _state(request)
    try:
        check_task_name(body.name)  # before queueing: a name like "a/b" could never be DELETEd
    except PeftkitError as error:
        raise RequestError(str(error), status=422, code="invalid_task_name") from None
    try:
        spec = await state.queue.run_exclusive(lambda: state.server.add_task(body.name, body.path))
    except RequestError:
        raise
    except PeftkitError as error:  # not an adapter, another backbone, a method that cannot be mixed
        raise RequestError(f"cannot load {body.path!r} as task {body.name!r}: {error}", status=400, code="bad_adapter") from None
    return _task_info(spec)


@router.delete("/adapters/{name}", status_code=204, responses=ERRORS)
async def remove_adapter(name: str, request: Request) -> Response:
    await _state(request).queue.run_exclusive(lambda: _state(request).server.remove_task(name))
    return Response(status_code=204)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# What a good body looks like, per route, for the messages about bad ones.
BODY_EXAMPLES = {
    "/predict": '{"task": "NAME", "text": "..."} or {"task": "NAME", "inputs": [{"text": "..."}]}',
    "/adapters": '{"name": "NAME", "path": "/path/to/adapter-directory"}',
}


def _validation_message(error: RequestValidationError, path: str) -> tuple[int, str, str]:
    example = BODY_EXAMPLES.get(path, BODY_EXAMPLES["/predict"])
    problems = error.errors()
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return 400, "invalid_json", f"the body is not valid JSON: send a JSON object such as {example}."
    parts = []
    for problem in problems[:5]:
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body") or "body"
        parts.append(f"{where}: {problem.get('msg')}")
    return 422, "invalid_request", "; ".join(parts) + f". Send JSON like {example}; /docs shows the schema."


def _unsupported_media_type(request: Request) -> tuple[int, str, str] | None:
    """The 415 for a body route (POST /predict, /adapters) sent without a JSON Content-Type, else None.

    Why here and not left to FastAPI: it leaves such a body unread (from 0.132 even with no Content-Type at
    all, which older releases read as JSON), so the client would meet a schema error about a body it did
    send, and the real fault, the header (``curl -d`` sends application/x-www-form-urlencoded), would stay
    hidden. Refusing every non-JSON type also keeps a browser's cross-site form posts away from the server.
    """
    if request.method != "POST" or request.url.path not in BODY_EXAMPLES:
        return None
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return None
    sent = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
    return 415, "unsupported_media_type", (
        f"the body was sent with {sent}; send it as JSON with the header 'Content-Type: application/json' "
        f"(curl: -H 'Content-Type: application/json'; httpx or requests: json=...), e.g. {BODY_EXAMPLES[request.url.path]}.")


@dataclasses.dataclass
class _AppState:
    server: TaskServer
    queue: BatchingQueue
    metrics: ServerMetrics
    timeout_seconds: float


def create_app(server: TaskServer, *, max_batch_size: int = 32, max_wait_ms: float = 5.0, max_queue_size: int = 1024,
               timeout_seconds: float = 30.0) -> FastAPI:
    """The FastAPI app serving ``server``'s tasks.

    Args:
        max_batch_size: Most rows in one mixed-task forward.
        max_wait_ms: Longest a row waits for others to join its batch (milliseconds).
        max_queue_size: Most rows waiting; beyond it requests get 503 with Retry-After.
        timeout_seconds: Longest a /predict request waits for its answer before a 504.
    """
    if not timeout_seconds > 0:
        raise PeftkitError(f"the request timeout must be positive, got {timeout_seconds}: pass e.g. --timeout 30.")
    queue = BatchingQueue(server.run_batch, max_batch_rows=max_batch_size, max_wait_seconds=max_wait_ms / 1000,
                          max_queue_rows=max_queue_size)
    server_metrics = ServerMetrics(lambda: queue.depth)
    queue.on_batch = server_metrics.on_batch

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await queue.start()
        try:
            yield
        finally:
            await queue.stop()

    app = FastAPI(title="peftkit serve", description="Many task adapters on one frozen backbone, batched across tasks.",
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # FastAPI's own pages load from a CDN
    app.state.peftkit = _AppState(server, queue, server_metrics, timeout_seconds)
    app.include_router(router)
    _serve_docs_locally(app)

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        refusal = _unsupported_media_type(request)
        if refusal is not None:
            server_metrics.errors.labels(refusal[1]).inc()
            response = _error(*refusal)
        else:
            response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", request.url.path if refusal else "unmatched")
        server_metrics.requests.labels(route, str(response.status_code)).inc()
        if route == "/predict":
            server_metrics.latency.observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        server_metrics.errors.labels(error.code).inc()
        return _error(error.status, error.code, str(error), error.headers)

    @app.exception_handler(PeftkitError)
    async def peftkit_error(request: Request, error: PeftkitError):
        server_metrics.errors.labels("invalid_request").inc()
        return _error(422, "invalid_request", str(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        status, code, message = _validation_message(error, request.url.path)
        server_metrics.errors.labels(code).inc()
        return _error(status, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        server_metrics.errors.labels(code).inc()
        message = f"{request.method} {request.url.path}: {error.detail}. The API is GET /health, GET /tasks, POST /predict, " \
                  "POST /adapters, DELETE /adapters/NAME, GET /metrics; /docs describes it."
        return _error(error.status_code, code, message, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        server_metrics.errors.labels("internal_error").inc()
        return _error(500, "internal_error", f"the server failed on this request ({type(error).__name__}: {error}); "
                      "the server log has the details. Please report it.")

    return app


DOCS_ASSETS = "/docs-assets"


def _serve_docs_locally(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their JavaScript, CSS and icon served by this server, so
    they work on a machine without internet: FastAPI's "self-hosting JavaScript and CSS for docs"
    recipe, with the files the fastapi-offline package ships (Swagger UI 5, which reads the
    OpenAPI 3.1 schema FastAPI writes)."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.staticfiles import StaticFiles

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=title, oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> Response:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return get_redoc_html(openapi_url=app.openapi_url, title=title, redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


def check_port_free(host: str, port: int) -> None:
    """PeftkitError naming the port and ``--port`` when ``host:port`` cannot be listened on
    (another server holds it, or a port below 1024 needs root); uvicorn would only log it and exit."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # uvicorn's choice for --host
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except socket.gaierror as error:
            raise PeftkitError(f"cannot listen on --host {host!r} ({error.strerror}): pass an address such as 127.0.0.1 "
                               "or 0.0.0.0.") from None
        except OverflowError:
            raise PeftkitError(f"--port {port} is not a port: pass one from 1 to 65535, e.g. --port 8000.") from None
        except OSError as error:
            raise PeftkitError(
                f"cannot listen on {host}:{port} ({error.strerror}): another program (another peftkit serve?) may be "
                f"using port {port}; stop it, or pass --port with a free port (e.g. --port {port + 1 if port < 65535 else 8000})."
            ) from None


# uvicorn's settings beyond host, port and log level. Keep-alive: uvicorn closes an idle
# connection after 5 s by default, exactly when httpx's pool (keepalive_expiry 5 s) may hand the
# same connection to a new request, which then fails with a ReadError; a load balancer in front
# (AWS ALB: 60 s idle) hits the same race. A server should outlive its clients' idle timeouts, so
# 75 s, as nginx's keepalive_timeout default.
UVICORN_OPTIONS: dict[str, Any] = {"timeout_keep_alive": 75}


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn (``UVICORN_OPTIONS``) until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, **UVICORN_OPTIONS)
