"""Compose planning: 32 sources per call, levels for more, order kept."""

from __future__ import annotations

import pytest

from gcs_log_sink.compose import plan_compose


def expand(steps: list, name: str) -> list[str]:  # type: ignore[type-arg]
    """The leaf sources a planned name stands for, in order."""
    for step in steps:
        if step.destination == name:
            return [leaf for source in step.sources for leaf in expand(steps, source)]
    return [name]


@pytest.mark.parametrize("count", [1, 2, 32, 33, 64, 65, 1024, 1025, 5000])
def test_plan_concatenates_every_source_once_in_order(count: int) -> None:
    """Whatever the count, the target is every source once, in order, 32 per call at most."""
    sources = [f"p/{i:06d}" for i in range(count)]
    steps = plan_compose(sources, "build.log", scratch="tmp/")
    assert "build.log" == steps[-1].destination
    assert all(len(step.sources) <= 32 for step in steps)
    assert sources == expand(steps, "build.log")
    assert [False] == [step.intermediate for step in steps if step.destination == "build.log"]


def test_a_few_sources_take_one_call() -> None:
    """Up to 32 sources: one compose, no intermediates."""
    assert 1 == len(plan_compose(["a", "b"], "t", scratch="x/"))


def test_nothing_to_compose_is_an_error() -> None:
    """An empty list is refused rather than making an empty object."""
    with pytest.raises(ValueError, match="nothing"):
        plan_compose([], "t", scratch="x/")
