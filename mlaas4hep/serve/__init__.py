"""Serving: raw events in, scores out, over HTTP, and the registry of models.

The predictor of a bundle (:mod:`.predictor`), request payloads (:mod:`.payloads`:
JSON, Arrow, Parquet events), adaptive batching (:mod:`.batching`), the worker state
that ties them together (:mod:`.server`), the HTTP layer (:mod:`.http_api`), the
service configuration (:mod:`.config`), the model registry (:mod:`.registry`, with
uploaded archives checked in :mod:`.archives`), what clients and the service agree on
(:mod:`.protocol`) and the Python client (:mod:`.client`).

May import: :mod:`mlaas4hep.model` and everything below it; never
:mod:`mlaas4hep.training`.
"""
