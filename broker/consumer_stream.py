"""One Consume call on the broker: ``ConsumerStream``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import grpc

from broker.errors import InvalidRequestError, ResourceLimitError
from broker.limits import check_consumer_room
from broker.managed_ledger import ManagedLedger, Position
from broker.stream_driver import run_stream
from broker.stream_requests import check_ack, check_flow, check_subscribe_request
from broker.subscription import ConsumerSession, Subscription
from strata.v1 import messaging_pb2

if TYPE_CHECKING:
    from broker.service import BrokerService

log = logging.getLogger(__name__)

_EOF: Any = grpc.aio.EOF

# Deliveries messages that may wait for the writer of one stream. While this many wait, the
# dispatcher passes the consumer by (``ConsumerSession.writable``), so a client that stops
# reading holds at most this many, each of at most DISPATCH_MAX_READ_ENTRIES entries.
MAX_QUEUED_DELIVERIES = 16
# Ack receipts waiting for their cursor flush or for room in the outbound queue; one more
# fails the stream (the client acknowledges with receipts and does not read them).
MAX_PENDING_ACK_RECEIPTS = 1000
# The outbound queue holds deliveries, ack receipts and the end marker. A delivery is queued
# only when fewer than MAX_QUEUED_DELIVERIES responses wait (checked by the dispatcher in the
# same step, without an await between), receipts and the end marker wait for room: the queue
# never overflows. The receipts' share keeps deliveries from waiting behind them.
# Failover state changes (``active_consumer_change``) have room of their own; a change beyond
# it, while the client reads nothing, is dropped (the client sees the state of the next one).
MAX_QUEUED_ACTIVE_CHANGES = 8
OUTBOUND_QUEUE_SIZE = (
    MAX_QUEUED_DELIVERIES + MAX_PENDING_ACK_RECEIPTS + MAX_QUEUED_ACTIVE_CHANGES + 1
)
# An ack receipt's error quotes at most this many refused ids.
MAX_REFUSALS_QUOTED = 5
# After the client half-closes, how long pending ack receipts may take before the stream ends.
RECEIPTS_DRAIN_TIMEOUT_SECONDS = 10


class ConsumerStream:
    """One consumer's Consume stream: permits and acknowledgements in, entries out.

    1. The client sends ``subscribe``: topic, subscription name, type (Exclusive, Shared or
       Failover, with a priority level), initial position and a consumer name ("" to get
       one), checked by
       ``check_subscribe_request`` (else INVALID_ARGUMENT). The broker loads the topic
       (another broker's topic: FAILED_PRECONDITION naming the owner), opens the durable
       subscription (a new one starts at the earliest or the latest entry) and attaches the
       consumer: a second consumer of an Exclusive subscription, or a type change while
       consumers are attached, is FAILED_PRECONDITION. It answers ``subscribed``; on a
       Failover subscription ``active_consumer_change`` follows, and again on each change.
    2. Then, in any order, the client sends:
       - ``flow``: more permits, counted in messages (at most ``MAX_PERMITS_PER_CONSUMER``
         held). The subscription's dispatcher sends whole entries as ``deliveries`` while the
         consumer has permits, charging each entry's message count;
       - ``ack``: individual ids (with a batch index for one message of a batch), or one
         cumulative id on an Exclusive subscription (``check_ack``). What cannot be applied
         is refused in the receipt's ``error`` and the stream goes on (Pulsar ignores such
         acks). With a ``request_id`` the
         broker answers ``ack_receipt`` once the cursor has persisted the acknowledgement
         (``cursor.flush()``), from a task this stream owns; at most
         ``MAX_PENDING_ACK_RECEIPTS`` are pending, one more is INVALID_ARGUMENT; a flush that
         fails ends the stream with the store's status (no receipt: the client resends);
       - ``redeliver``: the listed unacknowledged entries (all when none are listed) go back to
         the dispatcher, their redelivery count raised.
    3. Deliveries and receipts share one bounded outbound queue and one writer; see
       ``OUTBOUND_QUEUE_SIZE`` for why it never overflows.
    4. The stream ends OK when the client half-closes and the pending receipts are out (or
       ``RECEIPTS_DRAIN_TIMEOUT_SECONDS`` passed); an invalid request ends it with
       INVALID_ARGUMENT, a closing topic with UNAVAILABLE. However it ends, the consumer is
       detached (its unacknowledged entries go to the other consumers or the next one) and
       its receipt tasks are cancelled and awaited.

    Lifecycle: ``run()`` once, for the whole call; its reader and writer are owned by
    ``broker.stream_driver.run_stream``.
    """

    def __init__(self, broker: BrokerService, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._broker = broker
        self._context = context
        # None ends the writer; an exception (a failed acknowledgement flush) ends the stream;
        # a list is one dispatch's deliveries, split into responses (``split_deliveries``).
        self._outbound: asyncio.Queue[
            messaging_pb2.ConsumeResponse | list[messaging_pb2.ConsumeResponse] | Exception | None
        ] = asyncio.Queue(maxsize=OUTBOUND_QUEUE_SIZE)
        self._receipt_tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        first = await self._context.read()
        if first is _EOF:
            return
        request = check_subscribe_request(first)
        await self._broker.authorizer.authorize("MessagingService/Consume", first)
        topic = await self._broker.get_topic(request.topic)
        read_compacted = first.subscribe.read_compacted
        limits = await self._broker.namespaces.limits_for(topic.name.namespace_name)
        check_consumer_room(topic, request.subscription, limits)
        if first.subscribe.non_durable:
            start = first.subscribe.start_message_id
            subscription = await topic.create_reader_subscription(
                request.subscription,
                start_mark_delete(
                    topic.ledger,
                    start,
                    inclusive=first.subscribe.start_message_id_inclusive or start.batch_index >= 0,
                ),
                compacted=read_compacted,
            )
        else:
            subscription = await topic.get_subscription(
                request.subscription, request.type, start_at_earliest=request.start_at_earliest
            )
        consumer_name = request.consumer_name or f"{request.subscription}-{id(self._outbound):x}"
        session = ConsumerSession(
            consumer_name,
            self._send_deliveries,
            self._writable,
            priority_level=request.priority_level,
            on_active_change=self._send_active_change,
            key_shared_mode=request.key_shared_mode,
            hash_ranges=request.hash_ranges,
            disconnect=self._disconnect,
            max_unacked_messages=limits.max_unacked_messages_per_consumer,
        )
        subscription.max_unacked_messages = limits.max_unacked_messages_per_subscription
        if read_compacted:
            subscription.compacted = topic.compaction
        subscription.add_consumer(session, request.type)
        try:
            await self._context.write(
                messaging_pb2.ConsumeResponse(
                    subscribed=messaging_pb2.Subscribed(
                        topic=str(request.topic),
                        subscription=request.subscription,
                        consumer_name=consumer_name,
                    )
                )
            )
            await run_stream(
                topic,
                self._read_requests(subscription, session),
                self._write_responses(subscription),
            )
        finally:
            subscription.remove_consumer(session)
            await self._cancel_receipts()
            await topic.release_reader_subscription(subscription)

    # ---- reader -------------------------------------------------------------------------

    async def _read_requests(self, subscription: Subscription, session: ConsumerSession) -> None:
        while (request := await self._context.read()) is not _EOF:
            kind = request.WhichOneof("request")
            if kind == "flow":
                check_flow(request.flow, session.permits)
                subscription.add_permits(session, request.flow.permits)
            elif kind == "ack":
                self._acknowledge(request.ack, subscription, session)
            elif kind == "redeliver":
                ids = request.redeliver.message_ids
                positions = [(m.ledger_id, m.entry_id) for m in ids] if ids else None
                subscription.redeliver(session, positions)
            elif kind == "seek":
                await self._seek(request.seek, subscription)
            elif kind == "get_last_message_id":
                last = subscription.cursor_ledger_last()
                self._respond_now(
                    messaging_pb2.ConsumeResponse(
                        last_message_id=messaging_pb2.LastMessageId(
                            request_id=request.get_last_message_id.request_id,
                            message_id=_id_data(last),
                        )
                    )
                )
            else:
                raise InvalidRequestError(
                    "after 'subscribe', a Consume stream carries flow, ack, redeliver, seek or "
                    "get_last_message_id"
                )
        # Half-closed by the client: let pending ack receipts go out first.
        if self._receipt_tasks:
            await asyncio.wait(self._receipt_tasks, timeout=RECEIPTS_DRAIN_TIMEOUT_SECONDS)
        await self._outbound.put(None)

    async def _seek(self, seek: messaging_pb2.Seek, subscription: Subscription) -> None:
        """Reset the subscription (see ``Subscription.reset_to``), then answer seek_done in
        the same step: every delivery queued before it is from before the seek."""
        target = seek.WhichOneof("target")
        if target == "publish_time_ms":
            mark_delete = await subscription.position_before_publish_time(seek.publish_time_ms)
        elif target == "message_id":
            mark_delete = start_mark_delete(subscription.ledger, seek.message_id, inclusive=True)
        else:
            raise InvalidRequestError("seek needs a message_id or a publish_time_ms")
        subscription.reset_to(mark_delete)
        self._respond_now(
            messaging_pb2.ConsumeResponse(
                seek_done=messaging_pb2.SeekDone(request_id=seek.request_id)
            )
        )

    def _disconnect(self, error: Exception) -> None:
        """End this stream with ``error``'s status (UNAVAILABLE: the client reconnects)."""
        try:
            self._outbound.put_nowait(error)
        except asyncio.QueueFull:
            log.warning("consumer stream full; not disconnected (%s)", error)

    def _respond_now(self, response: messaging_pb2.ConsumeResponse) -> None:
        """Queue a control response without waiting (it has room reserved: see
        ``OUTBOUND_QUEUE_SIZE``)."""
        try:
            self._outbound.put_nowait(response)
        except asyncio.QueueFull:
            raise ResourceLimitError(
                "too many responses wait for this consumer; read them before asking more"
            ) from None

    def _acknowledge(
        self, ack: messaging_pb2.Ack, subscription: Subscription, session: ConsumerSession
    ) -> None:
        """Apply what can be applied; a refusal goes back in the ack receipt, never ends the
        stream (see ``AckReceipt`` in messaging.proto)."""
        refusals: list[str] = []
        try:
            check_ack(ack, subscription.type, subscription.type_name)
        except InvalidRequestError as exc:
            refusals.append(str(exc))
        else:
            if ack.cumulative:
                mid = ack.message_ids[0]
                try:
                    subscription.acknowledge_cumulative(
                        (mid.ledger_id, mid.entry_id), mid.batch_index, mid.batch_size
                    )
                except InvalidRequestError as exc:
                    refusals.append(str(exc))
            else:
                for mid in ack.message_ids:
                    try:
                        subscription.acknowledge(
                            session,
                            (mid.ledger_id, mid.entry_id),
                            mid.batch_index,
                            mid.batch_size,
                        )
                    except InvalidRequestError as exc:
                        if len(refusals) < MAX_REFUSALS_QUOTED:
                            refusals.append(str(exc))
        error = "; ".join(refusals)
        if error:
            log.debug("consumer %s: acknowledgement refused: %s", session.name, error)
        if ack.request_id:
            if len(self._receipt_tasks) >= MAX_PENDING_ACK_RECEIPTS:
                raise InvalidRequestError(
                    f"more than {MAX_PENDING_ACK_RECEIPTS} ack receipts pending"
                )
            task = asyncio.get_running_loop().create_task(
                self._send_receipt(subscription, ack.request_id, error)
            )
            self._receipt_tasks.add(task)
            task.add_done_callback(self._receipt_tasks.discard)

    async def _send_receipt(
        self, subscription: Subscription, request_id: int, error: str = ""
    ) -> None:
        try:
            await subscription.cursor.flush()
        except Exception as exc:
            # The acknowledgement is not durable, so no receipt: the stream ends with the
            # store's status and the client resends its unconfirmed acks on the next stream.
            await self._outbound.put(exc)
            return
        await self._outbound.put(
            messaging_pb2.ConsumeResponse(
                ack_receipt=messaging_pb2.AckReceipt(request_id=request_id, error=error)
            )
        )

    async def _cancel_receipts(self) -> None:
        tasks = list(self._receipt_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- writer -------------------------------------------------------------------------

    def _writable(self) -> bool:
        return self._outbound.qsize() < MAX_QUEUED_DELIVERIES

    def _send_deliveries(self, deliveries: list[messaging_pb2.Delivery]) -> None:
        # Called by the dispatcher only in the step where ``_writable()`` held: there is room.
        # One queue slot, one or more responses: each at most MAX_DELIVERIES_RESPONSE_BYTES
        # (gRPC's default receive limit, 4 MiB, less room for framing) unless one entry
        # alone is bigger.
        self._outbound.put_nowait(split_deliveries(deliveries))

    def _send_active_change(self, is_active: bool) -> None:
        try:
            self._outbound.put_nowait(
                messaging_pb2.ConsumeResponse(
                    active_consumer_change=messaging_pb2.ActiveConsumerChange(is_active=is_active)
                )
            )
        except asyncio.QueueFull:
            log.debug("consumer stream full: active=%s not sent", is_active)

    async def _write_responses(self, subscription: Subscription) -> None:
        outbound = self._outbound
        while (response := await outbound.get()) is not None:
            if isinstance(response, Exception):
                raise response
            if outbound.qsize() == MAX_QUEUED_DELIVERIES - 1:
                # The queue just left the level at which the dispatcher passes this consumer
                # by: it may have entries for it.
                subscription.notify()
            if isinstance(response, list):
                for part in response:
                    await self._context.write(part)
            else:
                await self._context.write(response)


# A Deliveries response stays within gRPC's default 4 MiB receive limit (with room for the
# framing of each delivery); an entry bigger than that goes alone (see messaging.proto).
MAX_DELIVERIES_RESPONSE_BYTES = 4 * 1024 * 1024 - 64 * 1024
DELIVERY_OVERHEAD_BYTES = 64


def split_deliveries(
    deliveries: list[messaging_pb2.Delivery],
) -> list[messaging_pb2.ConsumeResponse]:
    """The deliveries as responses of at most ``MAX_DELIVERIES_RESPONSE_BYTES`` each."""
    responses: list[messaging_pb2.ConsumeResponse] = []
    part: list[messaging_pb2.Delivery] = []
    size = 0
    for delivery in deliveries:
        cost = len(delivery.entry) + DELIVERY_OVERHEAD_BYTES
        if part and size + cost > MAX_DELIVERIES_RESPONSE_BYTES:
            responses.append(
                messaging_pb2.ConsumeResponse(deliveries=messaging_pb2.Deliveries(deliveries=part))
            )
            part, size = [], 0
        part.append(delivery)
        size += cost
    if part:
        responses.append(
            messaging_pb2.ConsumeResponse(deliveries=messaging_pb2.Deliveries(deliveries=part))
        )
    return responses


# The wire's earliest and latest ids (Python's -1 and 2^63-1 as uint64, as the SDK sends).
EARLIEST_ID = (1 << 64) - 1
LATEST_ID = (1 << 63) - 1


def start_mark_delete(
    ledger: ManagedLedger, message_id: messaging_pb2.MessageIdData, *, inclusive: bool
) -> Position:
    """The mark-delete position that makes ``message_id`` (or the entry after it) the next
    one read; earliest and latest as ``Subscribe.start_message_id`` says."""
    if message_id.ledger_id == EARLIEST_ID:
        return (-1, -1)
    if message_id.ledger_id == LATEST_ID:
        last = ledger.last_confirmed
        if last[0] < 0:
            first = ledger.first_position()
            return (first[0], first[1] - 1)
        return last
    position = (message_id.ledger_id, message_id.entry_id)
    return (position[0], position[1] - 1) if inclusive else position


def _id_data(position: Position) -> messaging_pb2.MessageIdData:
    if position[0] < 0:
        return messaging_pb2.MessageIdData(
            ledger_id=EARLIEST_ID, entry_id=EARLIEST_ID, batch_index=-1, partition=-1
        )
    return messaging_pb2.MessageIdData(
        ledger_id=position[0], entry_id=position[1], batch_index=-1, partition=-1
    )
