"""The cluster-wide calls of ``AdminService``: bookies, brokers and the runtime config.

``AdminServicer`` delegates to these functions: each reads the broker's state (or the
metadata store) and builds the response; names and errors stay at the servicer's edge.
"""

from __future__ import annotations

import json

from bookie.registry import DecommissionRefusedError, decommission_bookie, describe_bookies
from broker.errors import InvalidRequestError, NotFoundError, PreconditionError
from broker.ownership import LEADER_KEY
from broker.service import BrokerService
from strata.config_binding import config_to_dict
from strata.v1 import admin_pb2


async def list_bookies(broker: BrokerService) -> admin_pb2.ListBookiesResponse:
    cluster = await describe_bookies(broker.store)
    return admin_pb2.ListBookiesResponse(
        bookies=[
            admin_pb2.Bookie(
                id=b.bookie_id,
                available=b.available,
                instance_id=b.instance_id,
                ledger_count=b.ledger_count,
            )
            for b in cluster.bookies
        ],
        under_replicated_ledger_count=cluster.under_replicated_ledger_count,
        auditor=cluster.auditor,
    )


async def decommission(broker: BrokerService, bookie_id: str) -> None:
    if not bookie_id:
        raise InvalidRequestError("a bookie id (host:port) is required")
    try:
        await decommission_bookie(broker.store, bookie_id)
    except DecommissionRefusedError as exc:
        raise PreconditionError(str(exc)) from exc
    except KeyError as exc:
        raise NotFoundError(f"no bookie {bookie_id!r} is registered") from exc


async def list_brokers(broker: BrokerService) -> admin_pb2.ListBrokersResponse:
    """The live brokers with their last load report; a standalone lists itself."""
    ownership = broker.ownership
    if ownership is None:
        topics = broker.topics.values()
        return admin_pb2.ListBrokersResponse(
            brokers=[
                admin_pb2.BrokerLoad(
                    address=broker.advertised_address,
                    topics=len(broker.topics),
                    msg_rate_in=sum(t.messages_in.rate() for t in topics),
                    msg_rate_out=sum(t.messages_out.rate() for t in topics),
                    leader=True,
                )
            ]
        )
    reports = await ownership.load_reports()
    counts = await ownership.owned_bundle_counts()
    leader = await broker.store.get(LEADER_KEY)
    leader_address = leader.value.decode() if leader is not None else ""
    brokers = []
    for address in sorted(await ownership.live_brokers()):
        report = reports.get(address)
        brokers.append(
            admin_pb2.BrokerLoad(
                address=address,
                bundles=counts.get(address, 0),
                topics=report.topics if report else 0,
                msg_rate_in=report.msg_rate_in if report else 0.0,
                msg_rate_out=report.msg_rate_out if report else 0.0,
                bytes_rate_in=report.bytes_rate_in if report else 0.0,
                bytes_rate_out=report.bytes_rate_out if report else 0.0,
                cpu_percent=report.cpu_percent if report else 0.0,
                leader=address == leader_address,
            )
        )
    return admin_pb2.ListBrokersResponse(brokers=brokers)


def runtime_config(broker: BrokerService) -> admin_pb2.RuntimeConfig:
    """The broker's effective ``BrokerConfig`` as JSON, secrets masked."""
    return admin_pb2.RuntimeConfig(
        broker=broker.advertised_address,
        config_json=json.dumps(config_to_dict(broker.config)),
    )
