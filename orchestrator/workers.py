"""Who runs a job: a worker process's name, and whether one on this host is gone."""

from __future__ import annotations

import os
import socket


def worker_name() -> str:
    """`host:pid` of this process, recorded on the jobs it claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


def gone_from_this_host(worker: str | None) -> bool:
    """True for a worker process of this host that no longer exists: its runs need not
    wait for their leases to expire. (Another host's, or one that cannot be told, is not
    known to be gone; a reused pid makes a dead worker look alive, which only waits.)"""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
