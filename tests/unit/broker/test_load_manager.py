"""The load manager's decisions (``LoadManager.shed_once``) on reports in a memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bookie.ledger import LedgerManager
from broker.bundles import bundles_of
from broker.config import BrokerConfig
from broker.load_manager import LOAD_REPORTS_PREFIX, LoadManager, LoadReport
from broker.ownership import BundleOwnership, OwnershipConfig
from broker.service import BrokerService
from strata.metadata import MetadataStore, open_metadata_store
from strata.naming import NamespaceName, TopicName
from tests.unit.bookie.fake_bookies import FakeBookie

NAMESPACE = NamespaceName("public", "default")


class Setup:
    def __init__(self, store: MetadataStore, ownership: BundleOwnership) -> None:
        self.store = store
        self.ownership = ownership
        self.load_manager: LoadManager = ownership.load_manager
        self.forwarded: list[tuple[str, str, str]] = []


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    store = await open_metadata_store("memory://")
    bookie = FakeBookie()
    ledgers = LedgerManager(store, lambda: [bookie.address], lambda _address: bookie)
    forwarded: list[tuple[str, str, str]] = []

    async def forward(owner: str, key: str, operation: str) -> None:
        forwarded.append((owner, key, operation))

    service = BrokerService(
        BrokerConfig(port=0, data_dir=tmp_path),
        store,
        ledgers,
        advertised_address="a:1",
        ownership=OwnershipConfig(max_topics_per_bundle=100),
        forward=forward,
    )
    await service.initialize_defaults()
    assert service.ownership is not None
    await service.join_cluster()
    result = Setup(store, service.ownership)
    result.forwarded = forwarded
    try:
        yield result
    finally:
        await service.leave_cluster()
        await service.close()
        await store.close()


async def publish(store: MetadataStore, report: LoadReport) -> None:
    await store.put(LOAD_REPORTS_PREFIX + report.broker, report.to_json())


async def test_an_overloaded_broker_sheds_its_busiest_bundle(setup: Setup) -> None:
    bundles = bundles_of(NAMESPACE, {})
    hot, warm = bundles[0].key, bundles[1].key
    await publish(
        setup.store,
        LoadReport("b:1", bundles=2, msg_rate_in=9_000, bundle_msg_rates={hot: 8_000, warm: 1_000}),
    )
    await publish(setup.store, LoadReport("c:1", bundles=1, msg_rate_in=500))
    assert await setup.load_manager.shed_once() == [hot]
    assert setup.forwarded == [("b:1", hot, "unload")]
    # Not again within the grace period.
    assert await setup.load_manager.shed_once() == []


async def test_balanced_or_quiet_brokers_are_left_alone(setup: Setup) -> None:
    bundles = bundles_of(NAMESPACE, {})
    rates = {bundles[0].key: 400.0, bundles[1].key: 300.0}
    await publish(setup.store, LoadReport("b:1", msg_rate_in=700, bundle_msg_rates=rates))
    await publish(setup.store, LoadReport("c:1", msg_rate_in=100))
    assert await setup.load_manager.shed_once() == []  # under the 1,000 msg/s floor
    await publish(
        setup.store, LoadReport("b:1", msg_rate_in=9_000, bundle_msg_rates={bundles[0].key: 9e3})
    )
    assert await setup.load_manager.shed_once() == []  # one busy bundle: moving it moves the load


async def test_a_bundle_with_too_many_topics_is_split(setup: Setup) -> None:
    bundle = bundles_of(NAMESPACE, {})[2]
    await publish(setup.store, LoadReport("b:1", bundle_topics={bundle.key: 150}))
    assert await setup.load_manager.shed_once() == [bundle.key]
    after = await setup.ownership.bundles(NAMESPACE)
    assert len(after) == 5
    middle = (bundle.lower + bundle.upper) // 2
    assert [(b.lower, b.upper) for b in after[2:4]] == [
        (bundle.lower, middle),
        (middle, bundle.upper),
    ]


async def test_owning_a_bundle_covers_only_its_own_namespace(setup: Setup) -> None:
    other = bundles_of(NamespaceName("public", "other"), {"bundles": [0, 1 << 32]})[0]
    setup.ownership.owned[other.key] = other
    assert setup.ownership.owns_loaded(TopicName.parse("public/other/t"))
    assert not setup.ownership.owns_loaded(TopicName.parse("public/default/t"))
    assert not other.contains(TopicName.parse("public/default/t"))
