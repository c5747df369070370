"""The HTTP server of every role: ``/metrics`` and, on brokers, the operator console.

One small threaded WSGI server (the standard library's, as ``prometheus_client`` uses for its
own): a thread per connection, at most ``MAX_CONCURRENT_REQUESTS`` requests served at once
(one more is answered 503 at once), request lines and headers bounded by ``wsgiref``'s
defaults. ``serve_wsgi`` starts it on a thread it returns; ``HttpEndpoint.close`` stops it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Requests served at once by one endpoint; a scrape or a console poll takes milliseconds.
MAX_CONCURRENT_REQUESTS = 32


class _QuietHandler(WSGIRequestHandler):
    """Logs no access lines (a scrape every few seconds would flood the log)."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def bounded(app: WsgiApp, limit: int = MAX_CONCURRENT_REQUESTS) -> WsgiApp:
    """``app`` serving at most ``limit`` requests at once; one more is 503 at once."""
    slots = threading.BoundedSemaphore(limit)

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not slots.acquire(blocking=False):
            start_response(
                "503 Service Unavailable",
                [("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", "1")],
            )
            return [b"too many requests at once\n"]
        try:
            # Bodies are built whole (lists of bytes), so the slot covers the whole answer.
            return list(app(environ, start_response))
        finally:
            slots.release()

    return serve


@dataclass
class HttpEndpoint:
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_wsgi(host: str, port: int, app: WsgiApp, name: str) -> HttpEndpoint:
    """Serve ``app`` on ``host:port`` (0: a free port) from a thread named ``name``."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(_ThreadingServer):
        address_family = family

    server = make_server(str(sockaddr[0]), port, bounded(app), Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return HttpEndpoint(int(server.server_port), server, thread)
