"""Start the Cloud Tasks emulator bound to 127.0.0.1 only (it has no bind option).

Run with the emulator's own interpreter: `python tests/emulator_loopback.py start -p PORT
-d QUEUE`. The emulator listens on every interface (`[::]:PORT`); this rewrites that
address before its gRPC server binds, so tests never open a port beyond loopback.
"""

from __future__ import annotations

import sys

import grpc

_server = grpc.server


def _loopback_server(*args: object, **kwargs: object) -> grpc.Server:
    server = _server(*args, **kwargs)  # type: ignore[arg-type]
    add_port = server.add_insecure_port

    def add_insecure_port(address: str) -> int:
        return add_port("127.0.0.1:" + address.rsplit(":", 1)[1])

    server.add_insecure_port = add_insecure_port  # type: ignore[method-assign]
    return server


grpc.server = _loopback_server  # type: ignore[assignment]

if __name__ == "__main__":
    from gcloud_tasks_emulator.__main__ import main

    sys.exit(main())
