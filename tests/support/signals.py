"""Child processes that a test stops with Ctrl-C (SIGINT), as a user at a terminal does."""

from __future__ import annotations

import signal


def ctrl_c_as_at_a_terminal() -> None:
    """`preexec_fn` for such a child: SIGINT at its default (a KeyboardInterrupt in Python), whatever the
    test run inherited. A test suite started in the background (`./run test &`, nohup) ignores SIGINT,
    and children inherit an ignored signal: the child would never see the Ctrl-C the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
