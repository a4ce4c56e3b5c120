"""python -m iim.server [-c iim.conf]: the XMPP server.

Reads iim.conf (-c FILE, else $IIM_CONF, else ./iim.conf), opens the
keystore and the database, and serves until SIGTERM or SIGINT (a clean stop:
every session gets <system-shutdown/>, nothing accepted is lost). SIGHUP
re-reads the certificates: new connections get the new one, established
sessions keep theirs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from iim import conf
from iim import log as iim_log
from iim.keys.errors import KeyMaterialError

from .app import Server, StartupError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iim.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="iim.conf (default: $IIM_CONF, else ./iim.conf)")
    args = parser.parse_args(argv)
    config = conf.load_for_command(args.config)
    log = iim_log.setup("server", config.log.server)
    for warning in config.warnings:
        log.warning("%s", warning)
    try:
        asyncio.run(_serve(config, log))
    except (StartupError, KeyMaterialError) as err:
        log.critical("%s", err)
        print(err, file=sys.stderr)
        return 1
    return 0


async def _serve(config, log) -> None:
    server = Server(config, log)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    sys.exit(main())
