"""Rich error details (issue 14 item 1): refusals a client acts on carry a
``google.rpc.ErrorInfo`` (domain ``strata.io``) with a stable reason, readable with the
googleapis protos alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

import strata
from strata.v1 import messaging_pb2, messaging_pb2_grpc
from tests.harness import Standalone

pytestmark = pytest.mark.integration

TOPIC = "persistent://public/default/details"


def reason_of(error: grpc.RpcError) -> str:
    trailing: Any = error.trailing_metadata()  # type: ignore[attr-defined]
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    assert info.domain == "strata.io"
                    return str(info.reason)
    return ""


def first_answer(channel: grpc.Channel, method: str, request: object) -> Iterator[object]:
    stub = messaging_pb2_grpc.MessagingServiceStub(channel)
    return getattr(stub, method)(iter([request]), timeout=10)  # type: ignore[no-any-return]


def test_busy_producer_and_consumer_carry_reasons(standalone: Standalone) -> None:
    with strata.Client(standalone.address) as client:
        client.create_producer(TOPIC, producer_name="taken")
        client.subscribe(TOPIC, "exclusive")
        with grpc.insecure_channel(standalone.address) as channel:
            cases = [
                (
                    "Produce",
                    messaging_pb2.ProduceRequest(
                        open=messaging_pb2.OpenProducer(topic=TOPIC, producer_name="taken")
                    ),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "PRODUCER_BUSY",
                ),
                (
                    "Consume",
                    messaging_pb2.ConsumeRequest(
                        subscribe=messaging_pb2.Subscribe(topic=TOPIC, subscription="exclusive")
                    ),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "CONSUMER_BUSY",
                ),
            ]
            for method, request, code, reason in cases:
                with pytest.raises(grpc.RpcError) as refused:
                    list(first_answer(channel, method, request))
                assert refused.value.code() == code  # type: ignore[attr-defined]
                assert reason_of(refused.value) == reason
        # The SDK maps the reasons to its exceptions.
        with pytest.raises(strata.ProducerBusy):
            client.create_producer(TOPIC, producer_name="taken")
        with pytest.raises(strata.ConsumerBusy):
            client.subscribe(TOPIC, "exclusive")
