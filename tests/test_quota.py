"""iim/server/quota.py: sources, rates, counts and the rate-limited limit log,
driven with time passed in."""

import logging

import pytest

from iim.server.quota import CountBySource, LimitLog, RateBySource, TokenBucket, source_of


@pytest.mark.parametrize("address,source", [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("[::1]", "::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("/run/iim/link.sock", "/run/iim/link.sock"),
])
def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64(address, source):
    assert source_of(address) == source


def test_a_bucket_allows_a_burst_of_twice_the_rate_then_the_rate():
    bucket = TokenBucket(5)
    assert [bucket.allow(100.0) for _ in range(11)] == [True] * 10 + [False]
    assert bucket.allow(100.1) is False           # half a token
    assert bucket.allow(100.2) is True            # one token after 0.2 s at 5/s
    assert bucket.allow(100.2) is False


def test_rates_are_per_source_and_idle_sources_are_forgotten():
    rates = RateBySource(1)
    assert [rates.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert rates.allow("b", 0.0) is True          # another source has its own bucket
    for n in range(RateBySource.PRUNE_EVERY):
        rates.allow(f"s{n}", 10.0 + n * 0.001)
    assert len(rates) < RateBySource.PRUNE_EVERY  # refilled buckets were dropped


def test_a_count_refuses_at_its_limit_and_frees_on_remove():
    counts = CountBySource(2)
    assert [counts.add("a"), counts.add("a"), counts.add("a")] == [True, True, False]
    assert counts.add("b") is True
    counts.remove("a")
    assert counts.add("a") is True
    counts.remove("a"), counts.remove("a"), counts.remove("b")
    assert len(counts) == 0 and counts.held("a") == 0


def test_the_limit_log_writes_once_per_interval_counting_the_refusals(caplog):
    log = LimitLog(logging.getLogger("iim.test.limits"), interval=60)
    with caplog.at_level(logging.WARNING, logger="iim.test.limits"):
        for n in range(1000):
            log.hit("iim_server.max_resources", 10.0 + n * 0.01, f"user{n}@example.com")
        log.hit("iim_server.max_resources", 75.0, "late@example.com")
    assert [r.getMessage() for r in caplog.records] == [
        "limit iim_server.max_resources: refused 1 so far (latest: user0@example.com)",
        "limit iim_server.max_resources: refused 1000 since the last report "
        "(latest: late@example.com)",
    ]
