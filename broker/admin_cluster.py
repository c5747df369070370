"""The cluster-wide calls of ``AdminService``: bookies, brokers and the runtime config.

``AdminServicer`` delegates to these functions: each reads the broker's state (or the
metadata store) and builds the response; names and errors stay at the servicer's edge.
"""

from __future__ import annotations

import asyncio
import json
import logging

from bookie.api import BookieInfo
from bookie.errors import BookieError
from bookie.registry import DecommissionRefusedError, decommission_bookie, describe_bookies
from broker.errors import InvalidRequestError, NotFoundError, PreconditionError
from broker.ownership import LEADER_KEY
from broker.service import BrokerService
from strata.config_binding import config_to_dict
from strata.v1 import admin_pb2

log = logging.getLogger(__name__)


# ListBookies asks every available bookie for its disk use at once, waiting this long: a bookie
# that does not answer in time is listed with zeros (its availability is the registration's).
BOOKIE_INFO_TIMEOUT_SECONDS = 1.0


async def _disk_use(broker: BrokerService, bookie_id: str) -> BookieInfo | None:
    try:
        async with asyncio.timeout(BOOKIE_INFO_TIMEOUT_SECONDS):
            return await broker.ledgers.resolve(bookie_id).get_bookie_info()
    except (TimeoutError, BookieError) as exc:
        log.info("bookie %s did not report its disk use: %s", bookie_id, exc)
        return None


async def list_bookies(broker: BrokerService) -> admin_pb2.ListBookiesResponse:
    cluster = await describe_bookies(broker.store)
    infos = await asyncio.gather(
        *(_disk_use(broker, b.bookie_id) for b in cluster.bookies if b.available)
    )
    disk = dict(zip([b.bookie_id for b in cluster.bookies if b.available], infos, strict=True))
    bookies = []
    for b in cluster.bookies:
        info = disk.get(b.bookie_id)
        bookies.append(
            admin_pb2.Bookie(
                id=b.bookie_id,
                available=b.available,
                instance_id=b.instance_id,
                ledger_count=b.ledger_count,
                disk_used_bytes=info.disk_used_bytes if info else 0,
                disk_free_bytes=info.disk_free_bytes if info else 0,
                disk_total_bytes=info.disk_total_bytes if info else 0,
            )
        )
    return admin_pb2.ListBookiesResponse(
        bookies=bookies,
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
