"""`dpufleet service logs -f` prints each line once: what is new in a log tail that moved on since the last ask."""

from __future__ import annotations

import pytest

from dpufleet.cli.service import new_lines


@pytest.mark.parametrize(
    ("before", "now", "printed"),
    [
        ([], ["a", "b"], ["a", "b"]),  # the first ask: everything
        (["a", "b"], ["a", "b"], []),  # nothing new
        (["a", "b"], ["a", "b", "c"], ["c"]),  # appended
        (["a", "b", "c"], ["b", "c", "d", "e"], ["d", "e"]),  # the 200-line tail moved on: the oldest left
        (["tick", "tick"], ["tick", "tick", "tick"], ["tick"]),  # the same line again is a new line
        (["a", "b"], ["x", "y"], ["x", "y"]),  # moved on past everything seen: all of it is new
        (["a", "b"], [], []),  # the instance restarted with nothing written yet
    ],
)
def test_follow_prints_only_the_lines_after_what_it_printed(
    before: list[str], now: list[str], printed: list[str]
) -> None:
    assert new_lines(before, now) == printed
