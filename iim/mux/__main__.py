"""python -m iim.mux [-c iim.conf] [--instances N]: the multiplexor.

Reads iim.conf (-c FILE, else $IIM_CONF, else ./iim.conf) and starts
iim_mux.numinstances worker processes (--instances N overrides it), each
relaying clients from iim_mux.listenport to the server's iim_mux.serverport
over iim_mux.maxthreads links. SIGTERM or SIGINT stops it (exit status 0);
SIGHUP makes the workers reload the legacy-SSL certificate.

The link's shared secret is read from the file named by
iim_mux.muxlink_secretfile (one line, the sslpassword.conf format), if set.

With --managed (what `python -m iim.admin start` runs) the supervisor also
claims its runtime folder (iim.instancevardir): mux.pid, locked while it
runs, and the control socket mux.sock on which iim.admin asks for status
(workers, links, sessions, certificate), refresh (iim.conf and the NSS
certificate re-read, connected clients untouched) and stop.
"""

from __future__ import annotations

import argparse
import os
import sys

from iim import conf, runtime
from iim import log as iim_log
from iim.keys.errors import KeyMaterialError
from iim.keys.passwords import secret_file_warnings
from iim.limits import raise_nofile

#: Descriptors a process needs besides two per session (listeners, links, logs...).
FD_MARGIN = 100


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    config = conf.load_for_command(args.config)
    log = iim_log.setup("mux", config.log.mux, pipe_fd=args.log_fd)
    _, hard = raise_nofile()
    if args.worker is not None:
        return _worker(config, args, log)
    for warning in [*config.warnings, *secret_file_warnings(config, "mux")]:
        log.warning("%s", warning)
    line = nofile_warning(config.mux.maxsessions, hard)
    if line:
        log.warning("%s", line)
    if config.mux.usessl and not _key_material_ok(config, log):
        return 1
    return _supervise(config, args, log)


def _supervise(config, args, log) -> int:
    from .supervisor import Supervisor
    from .port import CannotListen, PortClaim
    instances = args.instances or config.mux.numinstances
    try:
        with runtime.claimed(config, "mux", args.managed) as claim, \
                PortClaim(config.mux.listenport):     # no other listener, before any worker
            return Supervisor(conf.config_path(args.config), instances, log, config=config,
                              runtime=claim).run()
    except (runtime.AlreadyRunning, runtime.RuntimeFolderError, CannotListen) as err:
        log.critical("%s", err)
        print(err, file=sys.stderr)
        return 1


def nofile_warning(maxsessions: int, hard_limit: int) -> str | None:
    """The one line logged when iim_mux.maxsessions cannot fit the open-files limit."""
    needed = maxsessions * 2 + FD_MARGIN
    if needed <= hard_limit:
        return None
    return (f"iim_mux.maxsessions = {maxsessions} needs about {needed} open files; the hard "
            f"limit here is {hard_limit} (raise it, e.g. LimitNOFILE= or limits.conf, or "
            f"lower iim_mux.maxsessions)")


def _key_material_ok(config, log) -> bool:
    """Check the legacy-SSL key material once, before any worker starts."""
    from .tls import load_context
    try:
        load_context(config.mux)
    except KeyMaterialError as err:
        log.critical("%s", err)
        print(err, file=sys.stderr)
        return False
    return True


def _worker(config, args, log) -> int:
    from .worker import serve
    ticket_keys = None
    if args.ticket_key_fd is not None:
        with os.fdopen(args.ticket_key_fd, "rb") as pipe:
            ticket_keys = pipe.read()
    control = None
    if args.control_fd is not None:
        from .control import WorkerControl
        control = WorkerControl(args.control_fd, config, args.worker, ticket_keys, log)
    return serve(config, args.worker, log, ticket_keys, control)


def _instances(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive number of instances")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m iim.mux", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="iim.conf (default: $IIM_CONF, else ./iim.conf)")
    parser.add_argument("--instances", type=_instances, metavar="N",
                        help="worker processes (overrides iim_mux.numinstances)")
    parser.add_argument("--managed", action="store_true",
                        help="claim iim.instancevardir: write mux.pid and answer "
                             "`python -m iim.admin status|refresh|stop` on mux.sock "
                             "(iim.admin start passes it)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ticket-key-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log-fd", type=int, help=argparse.SUPPRESS)   # iim/log.py
    return parser


if __name__ == "__main__":
    sys.exit(main())
