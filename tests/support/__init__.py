"""The tests' one harness for real processes and ports.

``ports``: ``free_port`` (a port nobody holds, from a range of this pytest
worker's own, outside the kernel's ephemeral range) and ``listening``.
``process``: ``Process`` (spawn with stdout/stderr in files, wait for a port,
a log line or any condition, stop with SIGTERM then SIGKILL, the logs on
failure). Every wait is for an event; its deadline only bounds a failure.
"""

from support.ports import free_port, listening
from support.process import Process, StartFailed, eventually, wait_until

__all__ = ["Process", "StartFailed", "eventually", "free_port", "listening", "wait_until"]
