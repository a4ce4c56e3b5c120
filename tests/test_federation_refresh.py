"""iim.admin refresh reaching the federation (Federation.refresh): new streams get
the new policy, the dialback secret survives (keys handed out a moment ago must
still verify), and a secret from a file is read again."""

from __future__ import annotations

import asyncio
import logging
import os

from iim import conf
from iim.server.federation import Federation
from iim.xmpp.dialback import dialback_key, key_is_valid


class _Router:
    domain = "a.example"


def federation(text: str, tmp_path) -> Federation:
    config = conf.from_text('iim_server.domainname = "a.example"\n' + text,
                            str(tmp_path / "iim.conf"))
    return Federation(config, _Router(), None, logging.getLogger("test"), negotiating=set())


def refreshed(fed: Federation, text: str, tmp_path) -> Federation:
    config = conf.from_text('iim_server.domainname = "a.example"\n' + text,
                            str(tmp_path / "iim.conf"))
    fed.refresh(config, None)
    return fed


def test_refresh_applies_the_new_policy_and_keeps_a_random_dialback_secret(tmp_path):
    async def run():
        fed = federation("", tmp_path)
        key = dialback_key(fed.context.policy.dialback_secret, "b.example", "a.example", "S1")
        refreshed(fed, 'iim_server.requiressl = "false"\niim_server.trust_all_cert = "true"\n'
                       'iim_server.s2s_queue_limit = "7"\n', tmp_path)
        return fed, key

    fed, key = asyncio.run(run())
    assert fed.context.trust_all_cert and fed.queue_limit == 7
    assert key_is_valid(fed.context.policy.dialback_secret, "b.example", "a.example", "S1", key)


def test_refresh_rereads_a_dialback_secret_file(tmp_path):
    secret = tmp_path / "dialback.conf"
    secret.write_text("Internal (Software) Token:first-secret\n")
    os.chmod(secret, 0o600)
    line = f'iim_server.dialback_secretfile = "{secret}"\n'

    async def run():
        fed = federation(line, tmp_path)
        before = fed.context.policy.dialback_secret
        secret.write_text("Internal (Software) Token:second-secret\n")
        refreshed(fed, line, tmp_path)
        return before, fed.context.policy.dialback_secret

    assert asyncio.run(run()) == (b"first-secret", b"second-secret")
