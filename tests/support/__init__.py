"""The tests' one harness for real processes and ports.

``ports``: ``free_port`` (a port nobody holds, from a range of this pytest
worker's own, outside the kernel's ephemeral range), ``listening`` and
``relocate`` (a configuration's loopback ports moved to free ones).
``process``: ``Process`` (spawn with stdout/stderr in files, wait for a port,
a log line or any condition, stop with SIGTERM then SIGKILL, the logs on
failure). Every wait is for an event; its deadline only bounds a failure.
"""

from support.ports import free_port, listening, relocate
from support.process import Process, StartFailed, eventually, wait_until

__all__ = ["Process", "StartFailed", "eventually", "free_port", "listening", "relocate",
           "wait_until"]
