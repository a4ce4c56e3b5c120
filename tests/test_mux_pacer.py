"""The relay's Pacer (iim/_fastmux.pyx, "Pacing"): when a busy turn is followed by
a pause of iim_mux.link_flush_delay_us, decided from the turns alone.

Each case feeds the Pacer a sequence of turns (work done, bytes relayed, start in
microseconds) through _fastmux.pacer_pauses, the same C function the loop calls,
and reads back the pause it chose after each turn. No clock is involved."""

from iim import _fastmux

DELAY = 1000       # microseconds, the default


def steady(every_us: int, work: int = 1, size: int = 200, count: int = 60,
           start: int = 1_000_000) -> list[tuple[int, int, int]]:
    """A turn every `every_us`, each doing `work` units of `size` bytes."""
    return [(work, work * size, start + i * every_us) for i in range(count)]


def pauses(turns, delay: int = DELAY) -> list[int]:
    return _fastmux.pacer_pauses(delay, turns)


def test_a_relay_that_was_idle_relays_its_first_bytes_at_once():
    assert pauses([(1, 200, 5_000_000)]) == [0]


def test_light_load_is_never_paused():
    """One client message or answer every 250 us (about two round trips per delay
    of 1 ms): a pause would cost a wakeup of its own and gather too little."""
    assert set(pauses(steady(250))) == {0}


def test_a_busy_relay_pauses_for_the_delay():
    """Work every 70 us (14 units per delay): after a few turns the Pacer has
    seen the rate and pauses for the whole delay after each turn."""
    answers = pauses(steady(70))
    assert answers[-1] == DELAY
    assert set(answers[10:]) == {DELAY}


def test_pausing_stops_when_the_load_goes_away():
    busy = steady(70, count=40)
    quiet = steady(2000, count=40, start=busy[-1][2] + 2000)
    answers = pauses(busy + quiet)
    assert answers[len(busy) - 1] == DELAY
    assert answers[-1] == 0


def test_the_border_does_not_flap():
    """Between the thresholds the Pacer keeps what it was doing: a relay that
    began pausing at a high rate keeps pausing at a rate just under the one
    that starts it, and one that was not pausing does not start at that rate."""
    every = 143                                # 7 units per delay: between 6 and 8
    high = steady(70, count=40)
    after_high = pauses(high + steady(every, count=80, start=high[-1][2] + every))
    assert set(after_high[-40:]) == {DELAY}
    assert set(pauses(steady(every, count=120))) == {0}


def test_bulk_transfers_are_not_paused():
    """The same rate of work carrying 64 KiB each: each wakeup is worth it
    already, and a pause would only slow the transfer's windows."""
    assert set(pauses(steady(70, size=65536))) == {0}


def test_a_delay_of_zero_never_pauses():
    assert set(pauses(steady(10, work=50), delay=0)) == {0}


def test_a_long_quiet_spell_is_forgotten_quickly():
    """An hour of silence counts as at most a few delays, so a relay that was
    idle begins pausing within a few dozen turns of a burst, not after
    thousands."""
    burst = steady(70, count=40, start=1_000_000 + 3600 * 1_000_000)
    answers = pauses([(1, 200, 1_000_000)] + burst)
    assert answers[-1] == DELAY
    assert answers.index(DELAY) < 30
