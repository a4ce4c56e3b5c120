"""python -m iim.server [-c iim.conf]: the XMPP server.

Reads iim.conf (-c FILE, else $IIM_CONF, else ./iim.conf), opens the
keystore and the database, and serves until SIGTERM or SIGINT (a clean stop:
every session gets <system-shutdown/>, nothing accepted is lost). SIGHUP
re-reads the certificates: new connections get the new one, established
sessions keep theirs.

With --managed (what `python -m iim.admin start` runs) the server also
claims its runtime folder (iim.instancevardir): server.pid, locked while it
runs, and the control socket server.sock on which iim.admin asks for
status, refresh (iim.conf and certificates re-read without dropping a
session) and stop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from iim import conf, runtime
from iim import log as iim_log
from iim.keys.errors import KeyMaterialError

from .app import Server, StartupError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iim.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="iim.conf (default: $IIM_CONF, else ./iim.conf)")
    parser.add_argument("--managed", action="store_true",
                        help="claim iim.instancevardir: write server.pid and answer "
                             "`python -m iim.admin status|refresh|stop` on server.sock "
                             "(iim.admin start passes it; use it to run in the foreground "
                             "under a service manager)")
    args = parser.parse_args(argv)
    config = conf.load_for_command(args.config)
    log = iim_log.setup("server", config.log.server)
    for warning in config.warnings:
        log.warning("%s", warning)
    try:
        with runtime.claimed(config, "server", args.managed) as claim:
            asyncio.run(_serve(config, log, claim))
    except (StartupError, KeyMaterialError, runtime.AlreadyRunning,
            runtime.RuntimeFolderError) as err:
        log.critical("%s", err)
        print(err, file=sys.stderr)
        return 1
    return 0


async def _serve(config, log, claim=None) -> None:
    server = Server(config, log)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
    control = await _start_control(server, claim, stop.set)
    await stop.wait()
    if control is not None:
        control.close()
    await server.stop()


async def _start_control(server, claim, on_stop):
    """The control socket of a managed server (iim/server/control.py), else None."""
    if claim is None:
        return None
    from .control import ControlServer
    control = ControlServer(server, claim.paths.socket, on_stop, claim.pidfile.started)
    try:
        await control.start()
    except OSError as exc:
        await server.stop()
        raise StartupError(f"iim.instancevardir: cannot listen on {claim.paths.socket}: "
                           f"{exc.strerror or exc}") from None
    return control


if __name__ == "__main__":
    sys.exit(main())
