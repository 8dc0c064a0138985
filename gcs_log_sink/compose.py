"""Compose many GCS objects into one: the plan is pure, the execution thin.

GCS composes at most 32 sources per call, and a composite can be composed again. So more
than 32 parts are composed in groups into intermediates, level by level, until one call can
make the target. Intermediates are deleted afterwards; the target is created only if
absent (``ifGenerationMatch=0``), so a composed log is never overwritten, unless the caller
asks to ``replace`` it (a re-run of a CI job on the same prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_COMPOSE_SOURCES", "ComposeStep", "compose", "is_transient", "plan_compose"]

MAX_COMPOSE_SOURCES = 32


@dataclass(frozen=True)
class ComposeStep:
    """One compose call: ``sources`` (in order) into ``destination``."""

    sources: tuple[str, ...]
    destination: str
    intermediate: bool


def plan_compose(
    sources: Sequence[str], target: str, *, scratch: str, fan_in: int = MAX_COMPOSE_SOURCES
) -> list[ComposeStep]:
    """The compose calls that concatenate ``sources`` into ``target``, in order.

    Intermediates are named ``{scratch}{level}-{index}``.
    """
    if not sources:
        raise ValueError("nothing to compose")
    if fan_in < 2:
        raise ValueError("fan_in must be at least 2")
    steps: list[ComposeStep] = []
    level_names = list(sources)
    level = 0
    while len(level_names) > fan_in:
        next_level = []
        for index in range(0, len(level_names), fan_in):
            group = tuple(level_names[index : index + fan_in])
            if len(group) == 1:
                next_level.append(group[0])
                continue
            name = f"{scratch}{level}-{index // fan_in:05d}"
            steps.append(ComposeStep(group, name, intermediate=True))
            next_level.append(name)
        level_names = next_level
        level += 1
    steps.append(ComposeStep(tuple(level_names), target, intermediate=False))
    return steps


def is_transient(exc: BaseException) -> bool:
    """The failures of a GCS that is away or overloaded, worth retrying; never a refusal or
    a configuration error (google-cloud-storage's own list, minus what our callers bound)."""
    import google.auth.exceptions
    import requests
    from google.api_core import exceptions as api

    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError)):
        return True
    if isinstance(exc, google.auth.exceptions.TransportError):
        return True
    transient = (
        api.TooManyRequests,
        api.InternalServerError,
        api.BadGateway,
        api.ServiceUnavailable,
        api.GatewayTimeout,
    )
    return isinstance(exc, transient)


def compose(
    client: Any,
    bucket: str,
    sources: Sequence[str],
    target: str,
    *,
    replace: bool = False,
    retry: Any = None,
    timeout: float = 60.0,
) -> Any:
    """Run :func:`plan_compose` against GCS; returns the target's Blob (reloaded).

    ``replace``: an existing ``target`` is overwritten instead of refused (412). ``retry``
    (a google.api_core ``Retry``; None: one try) and ``timeout`` apply to each request.
    """
    gcs_bucket = client.bucket(bucket)
    calls = {"retry": retry, "timeout": timeout}
    steps = plan_compose(sources, target, scratch=f"{target}.compose-tmp/")
    made: list[str] = []
    try:
        for step in steps:
            destination = gcs_bucket.blob(step.destination)
            destination.content_type = "text/plain; charset=utf-8"
            destination.compose(
                [gcs_bucket.blob(name) for name in step.sources],
                if_generation_match=None if replace and not step.intermediate else 0,
                **calls,
            )
            if step.intermediate:
                made.append(step.destination)
    finally:
        for name in made:
            gcs_bucket.blob(name).delete(**calls)
    final = gcs_bucket.blob(target)
    final.reload(**calls)
    return final
