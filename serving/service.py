"""BentoML service: raw physics events in, their scores out; the model registry API.

    bentoml serve serving.service:Inference --host 127.0.0.1 --port 3000

A thin adapter over the core: the configuration comes from the environment
(:mod:`mlaas4hep.serve.config`: ``MLAAS4HEP_SERVE_MODEL``, ``MLAAS4HEP_SERVE_TOKEN``,
…), each worker process holds one :class:`~mlaas4hep.serve.server.ModelServer` (the model,
its adaptive batcher, the alias watcher), ``POST /predict`` is the typed per-event
endpoint, and the registry and bulk endpoints are the Starlette app of
:mod:`mlaas4hep.serve.http_api`, mounted here. ``/healthz``, ``/livez``, ``/readyz``
(ready once a model is loaded) and ``/metrics`` are BentoML's.
"""

from __future__ import annotations

import gc
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field
from starlette.responses import Response

from mlaas4hep.serve.config import ServeConfig
from mlaas4hep.serve.http_api import GuardMiddleware, build_app, error_response
from mlaas4hep.serve.protocol import JSON
from mlaas4hep.serve.server import ModelServer

CONFIG = ServeConfig.from_env()

EVENTS = "records, one per event: [{'nJet': 2, 'Jet_pt': [51.2, 33.0], ...}, ...]"
COLUMNS = "columns, one list per branch: {'nJet': [2, ...], 'Jet_pt': [[51.2, 33.0], ...]}"


class Scores(BaseModel):
    """What ``POST /predict`` answers (documented here, encoded by the core)."""

    model: str = Field(description="tag of the model version that scored the events")
    task: str | None = Field(
        None, description="'multiclass' or 'regression'; absent for a binary model"
    )
    classes: list[str] | None = Field(
        None, description="multiclass: the class names, the order of each event's list"
    )
    scores: list[float] | list[list[float]] = Field(
        description="per event, in order: one probability (binary), the value "
        "(regression), or one probability per class (multiclass)"
    )


@bentoml.service(name="mlaas4hep", workers=CONFIG.workers, traffic={"timeout": 600})
@bentoml.asgi_app(build_app(lambda: bentoml.get_current_service().server), path="/")
class Inference:
    """Serves the configured model bundle and the model registry."""

    def __init__(self) -> None:
        self.server = ModelServer(CONFIG)
        # What start-up imported and loaded lives as long as the worker: moved out of the
        # collector's generations, it is not traversed by every full collection again
        # (~70 ms each, a tenth of the per-event path's time otherwise).
        gc.freeze()

    @bentoml.api(route="/predict")
    async def predict(
        self,
        events: Annotated[Any, Field(description=EVENTS)] = None,
        columns: Annotated[Any, Field(description=COLUMNS)] = None,
    ) -> Scores:
        """The model's outputs for raw events (probabilities, per-class probabilities or
        regressed values), batched adaptively with concurrent requests."""
        try:
            body = await self.server.predict_json({"events": events, "columns": columns})
        except Exception as err:
            return error_response(err)  # type: ignore[return-value]
        return Response(body, media_type=JSON)  # type: ignore[return-value]

    def __is_ready__(self) -> bool:
        return self.server.ready()


Inference.add_asgi_middleware(GuardMiddleware, config=CONFIG)
