"""Fixtures of the integration tests that several modules share (defined once here, so
that a session-scoped one, such as the trained model, is built once per session)."""

from serving_fixtures import service, trained  # noqa: F401 - registered as fixtures
