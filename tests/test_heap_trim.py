"""When the server gives freed heap back (iim/server/heap.py; issue 14, item 1).

``TrimPolicy`` is fed the sessions' turnover every CHECK_SECONDS: it trims
once per burst of at least ``churn`` logins and logouts, when the burst has
been over for ``quiet`` seconds, and under churn that never stops at most every
``longest`` seconds; a trickle, at most once per ``churn`` sessions. Each session's opening and ending
counts in ``SessionContext.turnover``. Without any churn, a resident size
``growth`` (and ``floor`` bytes) above what the last trim left trims too, at
most every ``longest`` seconds, and what a trim cannot give back is the new mark.
"""

from __future__ import annotations

import asyncio
import logging

from iim.server.c2s import ClientSession, SessionContext
from iim.server.heap import CHECK_SECONDS, TrimPolicy, malloc_trim, resident_bytes
from iim.xmpp.server_stream import ServerPolicy
from support.clock import ManualClock


def ticks(policy: TrimPolicy, counts, start: float = 0.0) -> list[float]:
    """Feed one count per check; the times a trim was due."""
    due = []
    for i, count in enumerate(counts, 1):
        now = start + i * CHECK_SECONDS
        if policy.due(now, count):
            due.append(now)
    return due


def test_one_trim_after_a_login_burst_once_it_has_been_quiet():
    policy = TrimPolicy(quiet=17.0)
    burst = [100 * i for i in range(1, 11)]             # 1,000 logins in 20 s
    counts = burst + [1000] * 20                        # then 40 s of nothing
    due = ticks(policy, counts)
    assert due == [20.0 + 18.0]                          # first check 17 s after the last login


def test_a_trickle_trims_once_per_churn_sessions_at_most():
    policy = TrimPolicy(quiet=17.0, churn=100)
    due = ticks(policy, [i // 10 for i in range(5000)])          # a session every 20 s
    assert len(due) == 4                                         # 499 sessions, 4 trims
    assert all(b - a >= 100 * 20 for a, b in zip(due, due[1:]))


def test_churn_that_never_stops_trims_at_most_every_longest_seconds():
    policy = TrimPolicy(quiet=17.0, longest=60.0)
    due = ticks(policy, [50 * i for i in range(1, 151)])            # 300 s, never quiet
    assert len(due) == 5
    assert all(b - a >= 60.0 for a, b in zip(due, due[1:]))


def test_a_second_burst_needs_its_own_churn():
    policy = TrimPolicy(quiet=5.0, churn=100)
    due = ticks(policy, [200] * 5 + [250] * 10 + [400] * 10)
    assert due == [8.0, 38.0]           # 200, quiet 5 s; +50 is not enough; +150, quiet 5 s


MB = 2**20


def grow(policy: TrimPolicy, sizes, left=None, start: float = 0.0) -> list[float]:
    """No churn; one resident size (MB) per check; ``left(size)``: what a trim leaves
    (default: all of it, nothing was free). The times a trim was due."""
    due = []
    for i, size in enumerate(sizes, 1):
        now = start + i * CHECK_SECONDS
        if policy.due(now, 0, int(size * MB)):
            due.append(now)
            policy.trimmed(int((left(size) if left else size) * MB))
    return due


def test_growth_without_churn_trims_once_the_queues_are_gone():
    policy = TrimPolicy(quiet=17.0, longest=60.0, resident=400 * MB)
    # a stall: 400 MB -> 425 MB in a few seconds, then the queues drain (glibc keeps the pages)
    sizes = [400.0] * 10 + [410.0, 425.0] + [425.0] * 18       # 60 s
    due = grow(policy, sizes, left=lambda size: 401.0)
    assert due == [60.0]                    # at most every LONGEST s: the first chance
    assert not grow(policy, [401.0] * 100 + [408.0] * 100, start=60.0)  # mark: 401, +1.7 %


def test_growth_under_the_threshold_does_not_trim():
    policy = TrimPolicy(quiet=17.0, growth=0.02, floor=4 * MB, resident=400 * MB)
    assert not grow(policy, [407.9] * 200)          # +1.98 %
    small = TrimPolicy(quiet=17.0, growth=0.02, floor=4 * MB, resident=50 * MB)
    assert not grow(small, [53.9] * 200)            # +7.8 %, but under 4 MB


def test_real_growth_is_trimmed_once_then_becomes_the_mark():
    policy = TrimPolicy(quiet=17.0, longest=60.0, resident=100 * MB)
    sizes = [100.0 + i * 0.1 for i in range(300)]   # 0.1 MB a check, none of it free
    due = grow(policy, sizes)
    assert len(due) >= 2
    assert all(b - a >= 60.0 for a, b in zip(due, due[1:]))
    marks = [100.0 + (t / CHECK_SECONDS - 1) * 0.1 for t in due]
    assert all(b - a >= 4.0 for a, b in zip(marks, marks[1:]))   # each time 4 MB more


def test_an_unknown_resident_size_never_trims_by_growth():
    policy = TrimPolicy(quiet=17.0, resident=0)
    assert not ticks(policy, [0] * 200)


def test_resident_bytes_reads_this_process():
    assert resident_bytes() > 4 * MB


def test_every_session_opening_and_ending_counts_in_the_turnover():
    class Carrier:
        peer, source = "memory:1", "192.0.2.1"

        def write(self, data):
            pass

        def close(self):
            pass

        def pending(self):
            return 0

    async def scenario():
        ctx = SessionContext(policy=ServerPolicy("example.com"), tls_context=None, router=None,
                             storage=None, log=logging.getLogger("test.heap"),
                             clock=ManualClock())
        sessions = [ClientSession(ctx, Carrier()) for _ in range(3)]
        opened = ctx.turnover
        sessions[0].close()
        sessions[1].connection_lost()
        sessions[1].connection_lost()           # ended once, counted once
        return opened, ctx.turnover

    assert asyncio.run(scenario()) == (3, 5)


def test_malloc_trim_runs_here():
    trim = malloc_trim()                        # the test machines run glibc
    assert trim is not None
    trim()
