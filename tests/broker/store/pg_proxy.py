"""A TCP proxy in front of the test's PostgreSQL server (loopback, real bytes both ways) that
can lose a commit's answer: armed, it passes a query that ends a write (`trigger`) to the
server, lets the server run it to its end (its ReadyForQuery), then cuts both connections
without passing the answer on. And it can refuse connections (a server gone), counting
every try."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

_READY = b"Z\x00\x00\x00\x05"  # ReadyForQuery: the server has finished the query


class Proxy:
    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.trigger: bytes | None = None  # armed: the query to lose the answer of
        self.refusing = False
        self.accepted = 0  # connections tried through it
        self.lost = 0  # answers it lost
        threading.Thread(target=self._serve, daemon=True).start()

    def dsn(self, dsn: str) -> str:
        return dsn.replace(f":{self.port}/", f":{self.address[1]}/")

    def close(self) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.refusing:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.port))
            pair = _Pair(self, client, server)
            threading.Thread(target=pair.up, daemon=True).start()
            threading.Thread(target=pair.down, daemon=True).start()


class _Pair:
    def __init__(self, proxy: Proxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy, self.client, self.server = proxy, client, server
        self.losing = False

    def up(self) -> None:
        self._pump(self.client, self.server, watch=True)

    def down(self) -> None:
        swallowed = b""
        while True:
            try:
                data = self.server.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self.losing:  # the server's answer to the write: kept from the client
                swallowed += data
                if _READY in swallowed:
                    self.proxy.lost += 1
                    break
                continue
            with suppress(OSError):
                self.client.sendall(data)
        self._cut()

    def _pump(self, source: socket.socket, to: socket.socket, *, watch: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            trigger = self.proxy.trigger
            if watch and trigger is not None and trigger in data:
                self.proxy.trigger = None
                self.losing = True
            try:
                to.sendall(data)
            except OSError:
                break
        self._cut()

    def _cut(self) -> None:
        for sock in (self.client, self.server):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

