"""Assembly of a broker's gRPC server (messaging, admin, health and reflection) and of its
metrics endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client.registry import Collector

from bookie.metrics import LEDGER_CLIENT_METRICS
from broker.admin_service import AdminServicer
from broker.config import MIB
from broker.console import Console
from broker.messaging_service import MessagingServicer
from broker.metrics import OwnershipCollector, broker_collectors
from broker.service import BrokerService
from strata.grpc_decoding import MalformedRequestInterceptor
from strata.http_endpoint import HttpEndpoint, serve_wsgi
from strata.metrics import RoleMetrics
from strata.reflection import REFLECTION_V1_SERVICE_NAME, enable_reflection
from strata.v1 import admin_pb2, admin_pb2_grpc, messaging_pb2, messaging_pb2_grpc

# Room for the gRPC framing and the batch header around a maximum-size message.
GRPC_MESSAGE_OVERHEAD_BYTES = 1 * MIB
MAX_CONCURRENT_STREAMS = 1000
BROKER_SERVICE_NAMES = (
    messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


def server_options(max_message_size_bytes: int) -> list[tuple[str, int]]:
    limit = max_message_size_bytes + GRPC_MESSAGE_OVERHEAD_BYTES
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit + MIB),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        # Clients ping open connections (every 30 s by default, as often as every 1 s with
        # keep_alive_interval_seconds) to notice a dead or paused broker; permit that.
        ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]


def bind_broker_server(
    host: str,
    port: int,
    max_message_size_bytes: int,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server bound to ``host:port`` (0: a free port), not serving yet; returns it and
    the bound port. The process role binds first so that it knows the broker's advertised
    address before it builds the broker."""
    server = grpc.aio.server(
        options=server_options(max_message_size_bytes),
        interceptors=[*interceptors, MalformedRequestInterceptor()],
    )
    try:
        address = f"{host}:{port}"
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"could not listen on {host}:{port} (is the port in use?)") from exc
    return server, bound


async def serve_broker(
    server: grpc.aio.Server, broker: BrokerService, *, ready: bool = True
) -> health.aio.HealthServicer:
    """Add the broker's services (messaging, admin, health, reflection) to a bound server and
    start serving; returns the health servicer. ``ready=False`` starts it NOT_SERVING (a
    cluster broker until it has joined the cluster); ``report_ready`` turns it SERVING."""
    messaging_pb2_grpc.add_MessagingServiceServicer_to_server(MessagingServicer(broker), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(broker), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (
        *BROKER_SERVICE_NAMES,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
        REFLECTION_V1_SERVICE_NAME,
    )
    enable_reflection(service_names, server)
    await server.start()
    await report_ready(health_servicer, ready=ready)
    return health_servicer


async def report_ready(health_servicer: health.aio.HealthServicer, *, ready: bool = True) -> None:
    """SERVING (or NOT_SERVING) for the whole server and for each of the broker's services:
    what readiness probes and load balancers read."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if ready
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", *BROKER_SERVICE_NAMES):
        await health_servicer.set(name, status)


async def start_broker_server(
    broker: BrokerService, host: str, port: int
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Bind and serve in one step (tests); returns the server, the bound port and the health
    servicer."""
    server, bound = bind_broker_server(host, port, broker.config.max_message_size_bytes)
    return server, bound, await serve_broker(server, broker)


def start_metrics_server(
    broker: BrokerService, host: str, port: int, *extra: Collector, console: Console | None = None
) -> RoleMetrics:
    """Serve the broker's metrics on ``host:port`` (0: a free port; < 0: not at all): its
    topics, its hot-path histograms, its ledger client's and ``extra`` (a standalone's
    bookie); and the ``console`` on every other path when it has no port of its own
    (``--web-port`` -1). The caller closes the result."""
    collectors = broker_collectors(
        lambda: broker.topics,
        asyncio.get_running_loop(),
        topic_level=broker.config.expose_topic_level_metrics,
    )
    if broker.ownership is not None:
        collectors.append(OwnershipCollector(broker.ownership))
    shared = console if console is not None and broker.config.web_port == -1 else None
    return RoleMetrics(
        host, port, [*collectors, *LEDGER_CLIENT_METRICS, *extra], console=shared
    ).start()


def serve_console_port(broker: BrokerService, console: Console | None) -> HttpEndpoint | None:
    """The console on a port of its own (``--web-port`` >= 0), else None. The caller closes
    the result (off the loop: the HTTP threads may wait on it)."""
    port = broker.config.web_port
    if console is None or port == -1:
        return None
    return serve_wsgi(broker.config.host, port, console, "console-http")


def web_port_of(console: Console | None, own: HttpEndpoint | None, metrics: RoleMetrics) -> int:
    """The port the console answers on, for the ready line (-1: no console)."""
    if console is None:
        return -1
    return own.port if own is not None else metrics.port
