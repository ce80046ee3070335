"""A worker host that can be cut off: a network namespace joined to ours by a veth pair.

Both ends use loopback addresses (127.77.x.1 here, 127.77.x.2 in the namespace) that never
leave this machine; `route_localnet` lets them cross the veth. Servers here listen on
127.0.0.1 only, so relays on 127.77.x.1 forward the namespace's connections to them.
`cut()` takes the link down (packets vanish, connections hang as in a real partition) and
`heal()` brings it back. Needs root and iproute2.
"""

from __future__ import annotations

import itertools
import os
import selectors
import shutil
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

_subnets = itertools.count(1)


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=10)


@dataclass
class Relay:
    """Forwards TCP connections from `listen` to `target`, one thread per connection."""

    listen: tuple[str, int]
    target: tuple[str, int]
    _server: socket.socket = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Relay:
        self._server = socket.create_server(self.listen)
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, left: socket.socket, right: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(left, selectors.EVENT_READ, right)
        selector.register(right, selectors.EVENT_READ, left)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            left.close()
            right.close()

    def stop(self) -> None:
        self._stop.set()
        self._server.close()


@dataclass
class Partition:
    name: str = field(default_factory=lambda: f"orch-{uuid.uuid4().hex[:6]}")
    subnet: int = field(default_factory=lambda: next(_subnets))
    relays: list[Relay] = field(default_factory=list)

    @property
    def host_address(self) -> str:
        return f"127.77.{self.subnet}.1"

    @property
    def inside_address(self) -> str:
        return f"127.77.{self.subnet}.2"

    @property
    def host_link(self) -> str:
        return f"vh{self.name[-6:]}"

    def create(self) -> Self:
        inside_link = f"vn{self.name[-6:]}"
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", inside_link)
        _run("ip", "link", "set", inside_link, "netns", self.name)
        self._configure(self.host_link, self.host_address, self.inside_address, ())
        self._configure(
            inside_link, self.inside_address, self.host_address, ("ip", "netns", "exec", self.name)
        )
        return self

    def _configure(self, link: str, own: str, peer: str, prefix: tuple[str, ...]) -> None:
        _run(*prefix, "sysctl", "-qw", f"net.ipv4.conf.{link}.route_localnet=1")
        _run(*prefix, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
        _run(*prefix, "ip", "addr", "add", f"{own}/32", "dev", link)
        _run(*prefix, "ip", "link", "set", link, "up")
        # The local table routes all of 127/8 to lo; a /32 for the peer overrides it.
        _run(*prefix, "ip", "route", "replace", f"{peer}/32", "dev", link, "table", "local")

    def expose(self, port: int) -> int:
        """Make 127.0.0.1:`port` reachable from inside at host_address:<returned port>."""
        relay = Relay((self.host_address, 0), ("127.0.0.1", port)).start()
        self.relays.append(relay)
        return int(relay._server.getsockname()[1])

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        _run("ip", "link", "set", self.host_link, "down")

    def heal(self) -> None:
        _run("ip", "link", "set", self.host_link, "up")
        _run(
            "ip",
            "route",
            "replace",
            f"{self.inside_address}/32",
            "dev",
            self.host_link,
            "table",
            "local",
        )

    def destroy(self) -> None:
        for relay in self.relays:
            relay.stop()
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()
