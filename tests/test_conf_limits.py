"""The limits table (iim/conf/limits.py): every limit a typed, documented
parameter with a default inside its sane range; one set far outside that range
is accepted with a warning naming file, line and parameter."""

from pathlib import Path

import pytest

from iim.admin.check import Level, check
from iim.conf import from_text
from iim.conf.limits import MUX_LIMITS, SERVER_LIMITS, MuxLimits, ServerLimits, defaults

SAMPLE = Path(__file__).parent.parent / "conf" / "iim.conf"
TABLES = [("iim_server.", SERVER_LIMITS, ServerLimits), ("iim_mux.", MUX_LIMITS, MuxLimits)]
ALL = [(prefix, limit, cls) for prefix, table, cls in TABLES for limit in table]


def config(text):
    return from_text('iim_server.domainname = "im.example.com"\n' + text, base_dir=Path("/etc"))


@pytest.mark.parametrize("prefix,limit,cls", ALL, ids=[p + l.name for p, l, _ in ALL])
def test_each_default_lies_in_its_sane_range(prefix, limit, cls):
    value = limit.convert(defaults(cls)[limit.name])
    low, high = limit.sane
    assert low <= value <= high


@pytest.mark.parametrize("prefix,limit,cls", ALL, ids=[p + l.name for p, l, _ in ALL])
def test_each_limit_is_set_in_the_sample_configuration_at_its_default(prefix, limit, cls):
    sample = from_text(SAMPLE.read_text(), base_dir=SAMPLE.parent)
    section = sample.server if prefix == "iim_server." else sample.mux
    assert f'{prefix}{limit.name} = "' in SAMPLE.read_text()
    assert getattr(section.limits, limit.name) == getattr(cls(), limit.name)


def test_limits_are_read_with_units():
    limits = config('iim_server.offline_quota = "2M"\n'
                    'iim_server.max_resources = "4"\n'
                    'iim_mux.maxsessions_per_source = "30"\n')
    assert limits.server.limits.offline_quota == 2 * 1024 * 1024
    assert limits.server.limits.max_resources == 4
    assert limits.mux.limits.maxsessions_per_source == 30
    assert limits.warnings == ()


def test_the_mux_handshake_timeout_reaches_the_worker():
    """iim_mux.handshake_timeout is what each relay is given (iim.mux.worker)."""
    from iim.mux.worker import WorkerSettings
    default = WorkerSettings.from_config(config(""), 0, None)
    assert default.handshake_timeout == MuxLimits.handshake_timeout == 10
    loaded = config('iim_mux.handshake_timeout = "45"\n')
    assert WorkerSettings.from_config(loaded, 0, None).handshake_timeout == 45
    assert loaded.warnings == ()


def test_a_mux_handshake_timeout_of_zero_is_an_error_and_one_second_a_warning():
    with pytest.raises(Exception) as caught:
        config('iim_mux.handshake_timeout = "0"\n')
    assert str(caught.value) == ('iim.conf:2: iim_mux.handshake_timeout: expected a number '
                                 'of seconds, at least 1, got "0"')
    assert [str(w) for w in config('iim_mux.handshake_timeout = "1"\n').warnings] == [
        "iim.conf:2: iim_mux.handshake_timeout: 1 is below 2, the least this limit is meant "
        "for: it will refuse legitimate use (default 10)"]


def test_a_limit_set_absurdly_low_is_warned_about_with_its_line():
    loaded = config('\niim_server.max_backlog = "1K"\n')
    assert [str(w) for w in loaded.warnings] == [
        "iim.conf:3: iim_server.max_backlog: 1024 is below 65536, the least this limit is "
        "meant for: it will refuse legitimate use (default 1048576)"]
    assert loaded.server.limits.max_backlog == 1024          # accepted all the same


def test_a_limit_set_absurdly_high_is_warned_about():
    loaded = config('iim_mux.accept_rate_per_source = "9999999"\n')
    assert [str(w) for w in loaded.warnings] == [
        "iim.conf:2: iim_mux.accept_rate_per_source: 9999999 is above 1000000, the most this "
        "limit is meant for: it protects nothing (default 50)"]


def test_a_limit_that_is_not_a_number_is_an_error():
    with pytest.raises(Exception) as caught:
        config('iim_server.max_roster_items = "lots"\n')
    assert str(caught.value) == ('iim.conf:2: iim_server.max_roster_items: expected a '
                                 'positive integer, got "lots"')


def test_admin_check_shows_the_warning(tmp_path):
    conf = tmp_path / "iim.conf"
    conf.write_text('iim_server.domainname = "im.example.com"\n'
                    'iim_server.usemuxport = "false"\n'
                    'iim_server.max_resources = "5000"\n')
    warnings = [f.text for f in check(conf) if f.level is Level.WARNING]
    assert any(text.startswith(f"{conf}:3: iim_server.max_resources: 5000 is above 1000")
               for text in warnings), warnings
