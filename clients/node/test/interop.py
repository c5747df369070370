"""The Python side of the Node client's interoperability test, with the ``strata`` SDK.

``produce SERVICE_URL TOPIC COUNT COMPRESSION``: send COUNT messages ``py-{i}`` with key
``k{i % 5}`` and properties ``{"i": str(i), "src": "python"}``, batched, and print one JSON
line per receipt: ``{"i", "id": [ledger, entry, batch_index, partition]}``.

``consume SERVICE_URL TOPIC SUBSCRIPTION COUNT``: receive COUNT messages from the earliest
(Shared), acknowledge them durably, and print one JSON line per message with its payload,
key, properties and id.

Every wait is bounded (``RECEIVE_TIMEOUT_MS``).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import strata

RECEIVE_TIMEOUT_MS = 10_000
SEND_TIMEOUT_S = 30.0
COMPRESSIONS = {
    "NONE": strata.CompressionType.NONE,
    "LZ4": strata.CompressionType.LZ4,
    "ZSTD": strata.CompressionType.ZSTD,
}


def id_list(message_id: strata.MessageId) -> list[int]:
    return [
        message_id.ledger_id(),
        message_id.entry_id(),
        message_id.batch_index(),
        message_id.partition(),
    ]


def produce(service_url: str, topic: str, count: int, compression: str) -> None:
    ids: dict[int, strata.MessageId] = {}
    done = threading.Event()
    with strata.Client(service_url) as client:
        producer = client.create_producer(
            topic, compression_type=COMPRESSIONS[compression], batching_max_messages=50
        )

        def receipt(
            index: int,
        ) -> Callable[[strata.Result, strata.MessageId | None], None]:
            def callback(result: strata.Result, message_id: strata.MessageId | None) -> None:
                if result == strata.Result.Ok and message_id is not None:
                    ids[index] = message_id
                if len(ids) == count:
                    done.set()

            return callback

        for i in range(count):
            producer.send_async(
                f"py-{i}".encode(),
                receipt(i),
                properties={"i": str(i), "src": "python"},
                partition_key=f"k{i % 5}",
            )
        producer.flush()
        if not done.wait(SEND_TIMEOUT_S):
            raise SystemExit(f"only {len(ids)} of {count} receipts")
        producer.close()
    for i in range(count):
        print(json.dumps({"i": i, "id": id_list(ids[i])}))


def consume(service_url: str, topic: str, subscription: str, count: int) -> None:
    with strata.Client(service_url) as client:
        consumer = client.subscribe(
            topic,
            subscription,
            consumer_type=strata.ConsumerType.Shared,
            initial_position=strata.InitialPosition.Earliest,
        )
        for _ in range(count):
            message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
            consumer.acknowledge(message)
            print(
                json.dumps(
                    {
                        "data": message.data().decode(),
                        "key": message.partition_key(),
                        "properties": message.properties(),
                        "id": id_list(message.message_id()),
                    }
                )
            )
        consumer.flush_acknowledgements()
        consumer.close()


def main() -> None:
    command, service_url, topic = sys.argv[1:4]
    if command == "produce":
        produce(service_url, topic, int(sys.argv[4]), sys.argv[5])
    elif command == "consume":
        consume(service_url, topic, sys.argv[4], int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown command {command!r}: use produce or consume")


if __name__ == "__main__":
    main()
