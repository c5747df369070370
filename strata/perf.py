"""``strata perf produce|consume``: load generator and meter, shaped like pulsar-perf.

Both commands print progress on stderr every second (rate, MB/s, latency p50/p99 over the
last second) and, as the last line on stdout, one JSON object for the whole run::

    {"messages": ..., "seconds": ..., "msg_per_s": ..., "mb_per_s": ...,
     "p50_ms": ..., "p99_ms": ..., "p999_ms": ..., "max_ms": ...}

and, for ``produce --rate``, ``publish_delay_p50_ms``, ``publish_delay_p99_ms`` and
``publish_delay_max_ms``, and the publish latency measured from each message's scheduled send
time instead of its send call, ``from_schedule_p50_ms``, ``from_schedule_p99_ms`` and
``from_schedule_p999_ms`` (what the previous definition reported).

Latency, as pulsar-perf and the OpenMessaging Benchmark measure it:

- produce: publish → receipt, from the ``send`` call to the receipt. With ``--rate`` the
  load is paced (``Pacer``) and how late each message's ``send`` call was against its
  schedule is reported apart, as ``publish_delay_*`` (OMB's "publish delay"): a stalled
  producer shows there, and a producer blocked on a full queue (``block_if_queue_full``)
  shows in both, since its ``send`` call has started. The pacer's own granularity (asyncio
  timers wake in whole milliseconds) is then not charged to the messaging system. Receipts
  are tracked per send chunk (at most one batch): the chunk's last receipt times every
  message of the chunk, which can overstate a message's latency by the gap between two
  batches of one chunk, never understate it.
- consume: publish → receive. The producer writes its ``send`` call's time
  (``time.time_ns()``, big-endian unsigned 64-bit) in the first 8 bytes of every payload;
  shorter payloads carry no time and give no latency. ``seconds`` runs from the first
  received message's send time (or its receipt, without one) to the last receipt, so
  ``msg_per_s`` is end-to-end.

MB are 10**6 bytes. Rates are paced in time slices of about 1 ms (``Pacer``), never by
per-message sleeps, so 5,000 msg/s holds to a fraction of a percent.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from strata.client import (
    AsyncClient,
    AsyncConsumer,
    AsyncProducer,
    BatchingType,
    CompressionType,
    ConsumerType,
    InitialPosition,
    MessageId,
    ProducerQueueIsFull,
    Result,
    StrataException,
    Timeout,
)
from strata.client._options import DEFAULT_BATCH_DELAY_MS
from strata.options import add_option, client_tls
from strata.stage_report import add_stages_parser
from strata.tokens_cli import client_authentication

TIMESTAMP_BYTES = 8
_TIMESTAMP = struct.Struct(">Q")
# Latencies are recorded in microseconds, from 1 µs to 1 hour, to 3 significant digits.
_HISTOGRAM_MAX_US = 3_600_000_000
REPORT_INTERVAL_S = 1.0
# Messages sent per pass of the produce loop when it is not paced.
UNPACED_CHUNK_MESSAGES = 1000
PACER_SLICE_S = 0.001
MB = 1_000_000


def _precision_shift(latency_us: int) -> int:
    """Low bits of a latency that the histogram cannot tell apart anyway.

    With 3 significant digits HdrHistogram keeps 2048 sub-buckets per power of two, so
    dropping the bits below that makes equal values of most latencies of one batch; the
    histogram is then fed one (value, count) pair per distinct value, not one call per
    message.
    """
    return max(0, latency_us.bit_length() - 11)


class Pacer:
    """Paces ``rate`` messages per second in time slices, for sync and asyncio callers.

    Message k is due at ``start + k / rate``. Callers ask how many are due (waiting a slice
    of at least ``slice_s`` when none is), send them, and report them with ``sent``.
    ``intended_ns(k)`` is message k's due time on the monotonic clock.
    """

    def __init__(self, rate_per_s: float, slice_s: float = PACER_SLICE_S) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate must be positive")
        self._interval_ns = 1e9 / rate_per_s
        self._slice_s = slice_s
        self._start_ns = time.monotonic_ns()
        self.sent_count = 0

    def intended_ns(self, index: int) -> int:
        return self._start_ns + int(index * self._interval_ns)

    def due(self) -> int:
        elapsed_ns = time.monotonic_ns() - self._start_ns
        return int(elapsed_ns / self._interval_ns) + 1 - self.sent_count

    def _delay_s(self) -> float:
        wait_s = (self.intended_ns(self.sent_count) - time.monotonic_ns()) / 1e9
        return max(wait_s, self._slice_s)

    async def wait(self) -> int:
        """How many messages are due now, sleeping until at least one is."""
        # Waiting for time itself, not for an event: a timed sleep is the right tool.
        while (count := self.due()) <= 0:  # noqa: ASYNC110
            await asyncio.sleep(self._delay_s())
        return count

    def wait_sync(self) -> int:
        while (count := self.due()) <= 0:
            time.sleep(self._delay_s())
        return count

    def sent(self, count: int) -> None:
        self.sent_count += count


def _new_histogram() -> HdrHistogram:
    return HdrHistogram(1, _HISTOGRAM_MAX_US, 3)


@dataclass
class _Series:
    """Latencies (µs) of one kind: appended per message, folded into a histogram in bulk."""

    pending_us: list[int] = field(default_factory=list)
    histogram: HdrHistogram = field(default_factory=_new_histogram)

    def fold(self) -> None:
        pending, self.pending_us = self.pending_us, []
        _record(self.histogram, pending)

    def ms(self, percentile: float) -> float:
        if not self.histogram.get_total_count():
            return 0.0
        return round(float(self.histogram.get_value_at_percentile(percentile)) / 1000, 3)


@dataclass
class _Meter:
    """Counts and latencies of one run: per reporting interval and in total."""

    messages: int = 0
    bytes: int = 0
    errors: int = 0
    # Latencies (µs) not yet folded into the histograms: appending to a list is cheap
    # per message; the histograms take them in bulk once per interval.
    pending_us: list[int] = field(default_factory=list)
    interval: HdrHistogram = field(default_factory=_new_histogram)
    total: HdrHistogram = field(default_factory=_new_histogram)
    first_ns: int | None = None  # wall clock
    last_ns: int | None = None
    # Publish delay: how late each paced send call was against its schedule; and the
    # latency measured from the schedule instead of the send call (delay + latency).
    delay: _Series = field(default_factory=_Series)
    scheduled: _Series = field(default_factory=_Series)
    # Connect, look up and create the producers (the topic's load on the broker included).
    setup_ms: float | None = None

    def fold(self) -> None:
        """Record the pending latencies into the interval histogram."""
        pending, self.pending_us = self.pending_us, []
        _record(self.interval, pending)
        self.delay.fold()
        self.scheduled.fold()

    def roll(self) -> None:
        """Close the interval: its latencies join the total."""
        self.total.add(self.interval)
        self.interval.reset()

    def summary(self) -> dict[str, Any]:
        self.fold()
        self.roll()
        seconds = 0.0
        if self.first_ns is not None and self.last_ns is not None:
            seconds = max(0.0, (self.last_ns - self.first_ns) / 1e9)

        def ms(percentile: float) -> float:
            if self.total.get_total_count() == 0:
                return 0.0
            return round(float(self.total.get_value_at_percentile(percentile)) / 1000, 3)

        result: dict[str, Any] = {
            "messages": self.messages,
            "seconds": round(seconds, 3),
            "msg_per_s": round(self.messages / seconds, 1) if seconds else 0.0,
            "mb_per_s": round(self.bytes / seconds / MB, 3) if seconds else 0.0,
            "p50_ms": ms(50),
            "p99_ms": ms(99),
            "p999_ms": ms(99.9),
            "max_ms": round(self.total.get_max_value() / 1000, 3)
            if self.total.get_total_count()
            else 0.0,
            "errors": self.errors,
        }
        if self.setup_ms is not None:
            result["setup_ms"] = self.setup_ms
        for prefix, series, names in (
            ("publish_delay", self.delay, (("p50", 50.0), ("p99", 99.0), ("max", 100.0))),
            ("from_schedule", self.scheduled, (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))),
        ):
            if series.histogram.get_total_count():
                for name, percentile in names:
                    result[f"{prefix}_{name}_ms"] = series.ms(percentile)
        return result


def _record(histogram: HdrHistogram, values_us: list[int]) -> None:
    for value, count in collections.Counter(values_us).items():
        histogram.record_value(min(max(value, 1), _HISTOGRAM_MAX_US), count)


async def _report(meter: _Meter, label: str) -> None:
    """Print one progress line per interval on stderr until cancelled."""
    last_messages = 0
    last_bytes = 0
    last_s = time.monotonic()
    while True:
        await asyncio.sleep(REPORT_INTERVAL_S)
        meter.fold()
        now_s = time.monotonic()
        span_s = max(now_s - last_s, 1e-9)
        rate = (meter.messages - last_messages) / span_s
        throughput = (meter.bytes - last_bytes) / span_s / MB
        if meter.interval.get_total_count():
            latency = (
                f"latency ms p50 {meter.interval.get_value_at_percentile(50) / 1000:.2f} "
                f"p99 {meter.interval.get_value_at_percentile(99) / 1000:.2f}"
            )
        else:
            latency = "latency -"
        print(
            f"{label}: {meter.messages} msgs, {rate:,.0f} msg/s, {throughput:.2f} MB/s, "
            f"{latency}" + (f", {meter.errors} errors" if meter.errors else ""),
            file=sys.stderr,
            flush=True,
        )
        meter.roll()
        last_messages, last_bytes, last_s = meter.messages, meter.bytes, now_s


# ------------------------------------------------------------------------ produce


async def _produce_one(
    producer: AsyncProducer,
    count: int,
    rate: float,
    size: int,
    meter: _Meter,
    batch_max_messages: int,
    keys: int = 0,
) -> None:
    """Send ``count`` messages (0 = forever) of ``size`` bytes, paced at ``rate`` if set;
    with ``keys``, each chunk (a batch's worth) carries one of ``keys`` keys in turn."""
    filler = b"\x00" * max(0, size - TIMESTAMP_BYTES)
    fixed = b"x" * size if size < TIMESTAMP_BYTES else None
    pack = _TIMESTAMP.pack
    mono0 = time.monotonic_ns()
    wall0 = time.time_ns()
    pacer = Pacer(rate) if rate else None
    # A chunk is timed by its last receipt, so it should not span more than one batch.
    chunk_limit = min(UNPACED_CHUNK_MESSAGES, batch_max_messages)
    sent = 0
    while count == 0 or sent < count:
        if pacer is not None:
            chunk = min(await pacer.wait(), chunk_limit)
        else:
            chunk = chunk_limit
            # Let receipts and timers run between chunks.
            await asyncio.sleep(0)
        if count:
            chunk = min(chunk, count - sent)
        # The chunk's send calls start now: latency runs from here, and the payloads carry
        # this time for perf consume.
        sent_ns = time.monotonic_ns()
        delays_us: list[int] | None = None
        if pacer is not None:
            first = pacer.sent_count
            delays_us = [
                max(0, sent_ns - pacer.intended_ns(first + k)) // 1000 for k in range(chunk)
            ]
            meter.delay.pending_us.extend(delays_us)
        payload = fixed if fixed is not None else pack(wall0 + sent_ns - mono0) + filler
        key = f"key-{(sent // chunk_limit) % keys}" if keys else None
        for k in range(chunk):
            callback = (
                _chunk_callback(meter, sent_ns, chunk, size, delays_us) if k == chunk - 1 else None
            )
            while True:
                try:
                    producer.send_nowait(payload, callback=callback, partition_key=key)
                    break
                except ProducerQueueIsFull:
                    await producer.wait_for_space()
        sent += chunk
        if pacer is not None:
            pacer.sent(chunk)
    await producer.flush()


def _chunk_callback(
    meter: _Meter, sent_ns: int, count: int, size: int, delays_us: list[int] | None
) -> Any:  # the producer's SendCallback
    """Times the ``count`` messages of one chunk, sent from ``sent_ns``, by its last receipt;
    with their publish delays, also from their scheduled send times."""

    def done(result: Result, message_id: MessageId | None) -> None:
        if result is not Result.Ok:
            meter.errors += count
            return
        latency_us = (time.monotonic_ns() - sent_ns) // 1000
        meter.messages += count
        meter.bytes += size * count
        meter.pending_us.extend([latency_us] * count)
        if delays_us is not None:
            meter.scheduled.pending_us.extend([latency_us + delay for delay in delays_us])
        meter.last_ns = time.time_ns()

    return done


async def _perf_produce(args: argparse.Namespace, meter: _Meter) -> None:
    compression = CompressionType[args.compression.upper()]
    started = time.monotonic()
    async with AsyncClient(
        args.service_url,
        args.operation_timeout_seconds,
        authentication=client_authentication(args),
        **client_tls(args),
    ) as client:
        producers = [
            await client.create_producer(
                args.topic,
                compression_type=compression,
                max_pending_messages=args.max_pending,
                block_if_queue_full=True,
                batching_max_messages=args.batch_max_messages,
                batching_max_publish_delay_ms=args.batch_delay_ms,
                batching_type=BatchingType.KeyBased if args.keys else BatchingType.Default,
            )
            for _ in range(args.producers)
        ]
        meter.setup_ms = round((time.monotonic() - started) * 1000, 3)
        shares = [args.messages // args.producers] * args.producers
        for index in range(args.messages % args.producers):
            shares[index] += 1
        rate = args.rate / args.producers
        reporter = asyncio.create_task(_report(meter, "produce"))
        meter.first_ns = time.time_ns()
        try:
            await asyncio.gather(
                *(
                    _produce_one(
                        producer,
                        share,
                        rate,
                        args.size,
                        meter,
                        args.batch_max_messages,
                        args.keys,
                    )
                    for producer, share in zip(producers, shares, strict=True)
                    if share or not args.messages
                )
            )
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)


# ------------------------------------------------------------------------ consume


async def _consume_one(
    consumer: AsyncConsumer,
    target: int,
    idle_timeout_ms: int | None,
    meter: _Meter,
) -> None:
    unpack = _TIMESTAMP.unpack_from
    while target == 0 or meter.messages < target:
        try:
            messages = await consumer.receive_many(1000, idle_timeout_ms)
        except Timeout:
            return
        now_wall_ns = time.time_ns()
        latencies: list[int] = []
        total_bytes = 0
        shift = 0
        first = messages[0].data()
        if len(first) >= TIMESTAMP_BYTES:  # the oldest message: the largest latency
            shift = _precision_shift(max(0, now_wall_ns - unpack(first)[0]) // 1000)
        for message in messages:
            data = message.data()
            total_bytes += len(data)
            if len(data) >= TIMESTAMP_BYTES:
                latencies.append((now_wall_ns - unpack(data)[0]) // 1000 >> shift << shift)
        if meter.first_ns is None:
            meter.first_ns = (
                min(unpack(first)[0], now_wall_ns) if len(first) >= TIMESTAMP_BYTES else now_wall_ns
            )
        meter.pending_us.extend(latencies)
        meter.messages += len(messages)
        meter.bytes += total_bytes
        meter.last_ns = now_wall_ns
        consumer.acknowledge_many(messages)


async def _perf_consume(args: argparse.Namespace, meter: _Meter) -> None:
    position = (
        InitialPosition.Earliest if args.initial_position == "earliest" else InitialPosition.Latest
    )
    consumer_type = ConsumerType.Shared if args.consumers > 1 else ConsumerType.Exclusive
    if args.type:
        consumer_type = ConsumerType["".join(p.capitalize() for p in args.type.split("_"))]
    idle_timeout_ms = int(args.timeout_seconds * 1000) or None
    async with AsyncClient(
        args.service_url,
        args.operation_timeout_seconds,
        authentication=client_authentication(args),
        **client_tls(args),
    ) as client:
        consumers = [
            await client.subscribe(
                args.topic,
                args.subscription,
                consumer_type=consumer_type,
                initial_position=position,
                receiver_queue_size=args.receiver_queue_size,
            )
            for _ in range(args.consumers)
        ]
        reporter = asyncio.create_task(_report(meter, "consume"))
        try:
            await asyncio.gather(
                *(_consume_one(c, args.messages, idle_timeout_ms, meter) for c in consumers)
            )
            for consumer in consumers:
                await consumer.flush_acknowledgements(wait_durable=True)
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)


# ------------------------------------------------------------------------- the CLI


def _run(args: argparse.Namespace) -> int:
    meter = _Meter()
    code = 0
    try:
        asyncio.run(args.perf_main(args, meter))
    except KeyboardInterrupt:
        print("interrupted; results so far:", file=sys.stderr)
    except StrataException as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    print(json.dumps(meter.summary()), flush=True)
    return code


def add_perf_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    environ: Mapping[str, str] | None,
) -> None:
    """Register ``strata perf produce|consume`` on the top-level parser."""
    perf = commands.add_parser(
        "perf",
        help="load generator and meter (pulsar-perf)",
        description="Load generator and meter. Progress on stderr every second; the last "
        "line on stdout is one JSON object with msg_per_s, mb_per_s, p50_ms, p99_ms, "
        "p999_ms, max_ms, messages and seconds (produce --rate adds publish_delay_* and "
        "from_schedule_*).",
    )
    kinds = perf.add_subparsers(dest="perf_kind", metavar="KIND", required=True)

    produce = kinds.add_parser(
        "produce",
        parents=[common],
        help="publish at a rate and measure publish → receipt latency",
        description="Publish and measure publish → receipt latency, from each send call "
        "(with --rate, how late the send calls were against the schedule is reported as "
        "publish_delay_*). Each payload starts with its send time for perf consume.",
    )
    produce.add_argument("topic", metavar="TOPIC")
    add_option(
        produce,
        "-r",
        "--rate",
        type=float,
        default=0.0,
        help="messages per second over all producers, 0 = as fast as possible",
        environ=environ,
    )
    add_option(
        produce, "--size", type=int, default=100, help="payload size in bytes", environ=environ
    )
    add_option(
        produce,
        "-m",
        "--messages",
        type=int,
        default=100_000,
        help="messages to send over all producers, 0 = until Ctrl-C",
        environ=environ,
    )
    add_option(
        produce, "--producers", type=int, default=1, help="producers on the topic", environ=environ
    )
    add_option(
        produce,
        "--keys",
        type=int,
        default=0,
        help="keyed messages: each batch's worth carries one of this many keys in turn, "
        "with key-based batching (for Key_Shared); 0 = no keys",
        environ=environ,
    )
    add_option(
        produce,
        "--batch-max-messages",
        type=int,
        default=1000,
        help="batching_max_messages",
        environ=environ,
    )
    add_option(
        produce,
        "--batch-delay-ms",
        type=float,
        default=DEFAULT_BATCH_DELAY_MS,
        help="batching_max_publish_delay_ms",
        environ=environ,
    )
    add_option(
        produce,
        "--max-pending",
        type=int,
        default=10_000,
        help="max_pending_messages per producer (the producer waits when full)",
        environ=environ,
    )
    add_option(
        produce,
        "--compression",
        choices=["none", "lz4", "zstd"],
        default="none",
        help="batch compression",
        environ=environ,
    )
    produce.set_defaults(handler=_run, perf_main=_perf_produce)

    consume = kinds.add_parser(
        "consume",
        parents=[common],
        help="consume, acknowledge and measure publish → receive latency",
        description="Consume and acknowledge, measuring publish → receive latency from the "
        "send time perf produce writes into each payload.",
    )
    consume.add_argument("topic", metavar="TOPIC")
    add_option(
        consume, "-s", "--subscription", default="sub", help="subscription name", environ=environ
    )
    add_option(
        consume,
        "-m",
        "--messages",
        type=int,
        default=0,
        help="stop after this many messages, 0 = no limit",
        environ=environ,
    )
    add_option(
        consume,
        "--consumers",
        type=int,
        default=1,
        help="consumers (Shared subscription when more than one, unless --type says)",
        environ=environ,
    )
    add_option(
        consume,
        "--type",
        choices=["exclusive", "shared", "failover", "key_shared"],
        default="",
        help="subscription type (default: exclusive for one consumer, else shared)",
        environ=environ,
    )
    add_option(
        consume,
        "--initial-position",
        choices=["earliest", "latest"],
        default="latest",
        help="where a new subscription starts",
        environ=environ,
    )
    add_option(
        consume,
        "--timeout-seconds",
        type=float,
        default=30.0,
        help="stop after this long without a message, 0 = never",
        environ=environ,
    )
    add_option(
        consume,
        "--receiver-queue-size",
        type=int,
        default=1000,
        help="flow permits per consumer",
        environ=environ,
    )
    consume.set_defaults(handler=_run, perf_main=_perf_consume)

    add_stages_parser(kinds, environ)
