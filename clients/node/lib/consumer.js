'use strict';
// The consumer: the Consume stream, flow permits, grouped acks with receipts, reconnects (as
// strata/client/_consumer.py, single topic only).
//
// Wire behaviour: subscribe → subscribed; then Flow(receiverQueueSize). Deliveries carry whole
// entries (a StoredEntry: producer header + compressed MessageBatch); the broker charges one
// permit per message of an entry, and a redelivered entry comes whole with the indexes already
// acknowledged set in acked_batch_indexes (bit i % 64 of word i / 64): those are skipped, and
// their permits count as used. Permits used are granted again once half the queue is used.
// Acks are grouped (ackGroupTimeMs): an entry whose messages are all acknowledged goes as one
// id with batch_index -1, else each index goes with the entry's batch_size. Acks carry a
// request_id; the broker answers ack_receipt once they are durable, and acks without a receipt
// are sent again after a reconnect (acks are idempotent).
const { StrataError, TimeoutError, AlreadyClosedError, Status } = require('./errors');
const { Reconnector, serveCall } = require('./connection');
const { decodeEntry, ackedFlags, Message, MessageId } = require('./batch');

const SUBSCRIPTION_TYPES = {
  Exclusive: 'SUBSCRIPTION_TYPE_EXCLUSIVE',
  Shared: 'SUBSCRIPTION_TYPE_SHARED',
  Failover: 'SUBSCRIPTION_TYPE_FAILOVER',
  KeyShared: 'SUBSCRIPTION_TYPE_KEY_SHARED',
};
const INITIAL_POSITIONS = { Latest: 'INITIAL_POSITION_LATEST', Earliest: 'INITIAL_POSITION_EARLIEST' };
// The broker answers at most 1000 pending ack receipts per stream (more ends the stream);
// this client asks for a receipt only while fewer than this many are outstanding.
const MAX_OUTSTANDING_RECEIPTS = 64;
// Acks kept for resending after a reconnect, at most (ids); past it the oldest are dropped.
const MAX_UNCONFIRMED_ACK_IDS = 100_000;
const CLOSE_TIMEOUT_MS = 5_000;

class Consumer {
  constructor(client, topic, options) {
    if (!options || !options.subscription) throw new TypeError('subscribe needs a subscription name');
    const type = SUBSCRIPTION_TYPES[options.subscriptionType || 'Exclusive'];
    const position = INITIAL_POSITIONS[options.subscriptionInitialPosition || 'Latest'];
    if (!type) throw new TypeError(`unknown subscriptionType ${options.subscriptionType}`);
    if (!position) throw new TypeError(`unknown subscriptionInitialPosition ${options.subscriptionInitialPosition}`);
    this._client = client;
    this._protos = client._protos;
    this.topic = topic;
    this.subscription = options.subscription;
    this.consumerName = options.consumerName || '';
    this._type = type;
    this._position = position;
    this._receiverQueueSize = options.receiverQueueSize ?? 1000;
    this._refillThreshold = Math.max(1, Math.floor(this._receiverQueueSize / 2));
    this._ackGroupTimeMs = options.ackGroupTimeMs ?? 10;
    this._queue = [];
    this._receiveWaiters = [];
    this._entries = new Map(); // "ledger:entry" → entry info, for the acks of its messages
    this._ackPending = []; // MessageIdData not yet sent
    this._ackTimer = null;
    this._permitsUsed = 0;
    this._unconfirmed = []; // [{seq, ids}] acks sent and not yet covered by a receipt
    this._unconfirmedIds = 0;
    this._ackSeq = 0;
    this._receiptMarks = new Map(); // request id → ack seq it covers
    this._receiptWaiters = new Map(); // request id → resolve
    this._nextRequestId = 1;
    this._call = null;
    this._closed = false;
    this._failure = null;
    this._reconnector = new Reconnector(client._pool, topic, {
      shouldStop: () => this._closed || (this._onSubscribed !== null && Date.now() > this._openDeadline),
    });
  }

  _start(timeoutMs) {
    return new Promise((resolve, reject) => {
      this._onSubscribed = resolve;
      this._openDeadline = Date.now() + timeoutMs;
      this._running = this._reconnector.run((stub) => this._attempt(stub)).then((error) => {
        this._fail(error);
        reject(error);
      });
    });
  }

  _attempt(stub) {
    const call = stub.Consume();
    let subscribed = false;
    const served = serveCall(call, this._protos, (response) => {
      const kind = response.response;
      if (!subscribed) {
        if (kind !== 'subscribed') throw new StrataError('the first answer was not subscribed', { retriable: true });
        subscribed = true;
        this._handleSubscribed(response.subscribed, call);
      } else if (kind === 'deliveries') {
        this._handleDeliveries(response.deliveries.deliveries);
      } else if (kind === 'ack_receipt') {
        this._handleAckReceipt(Number(response.ack_receipt.request_id));
      } else if (kind !== 'active_consumer_change') {
        throw new StrataError(`unexpected ${kind} on an open consume stream`, { retriable: true });
      }
    }, () => subscribed);
    call.write({
      subscribe: {
        topic: this.topic,
        subscription: this.subscription,
        type: this._type,
        initial_position: this._position,
        consumer_name: this.consumerName,
      },
    });
    return served.finally(() => {
      if (this._call === call) this._call = null;
    });
  }

  _handleSubscribed(subscribed, call) {
    this._reconnector.opened();
    if (this._onSubscribed !== null) {
      this.consumerName = subscribed.consumer_name || this.consumerName;
      const onSubscribed = this._onSubscribed;
      this._onSubscribed = null;
      onSubscribed(this);
    } else {
      // A new stream: the broker redelivers everything unacknowledged.
      this._queue = [];
    }
    this._permitsUsed = 0;
    this._call = call;
    // Acks the old stream may have lost go again, then the outstanding receipt requests, all
    // before the first Flow so that the broker does not redeliver what they acknowledge.
    for (const { ids } of this._unconfirmed) call.write({ ack: { message_ids: ids } });
    for (const requestId of [...this._receiptMarks.keys()].sort((a, b) => a - b)) {
      call.write({ ack: { message_ids: [], request_id: requestId } });
    }
    call.write({ flow: { permits: this._receiverQueueSize } });
  }

  _handleDeliveries(deliveries) {
    let skipped = 0;
    for (const delivery of deliveries) {
      let decoded;
      try {
        decoded = decodeEntry(this._protos, delivery.entry);
      } catch (error) {
        // As Pulsar: a corrupt entry is discarded (acknowledged), not retried forever.
        console.error(`strata: discarding corrupt entry ${delivery.ledger_id}:${delivery.entry_id}: ${error.message}`);
        this._queueAck({ ledger_id: delivery.ledger_id, entry_id: delivery.entry_id, batch_index: -1, batch_size: 0, partition: -1 });
        skipped += 1;
        continue;
      }
      const count = decoded.payloads.length;
      const key = `${delivery.ledger_id}:${delivery.entry_id}`;
      const entry = {
        topic: this.topic,
        partition: -1,
        ledgerId: BigInt(delivery.ledger_id),
        entryId: BigInt(delivery.entry_id),
        batchSize: count,
        publishTimeMs: decoded.publishTimeMs,
        redeliveryCount: delivery.redelivery_count,
        acked: ackedFlags(delivery.acked_batch_indexes, count),
        remaining: 0,
      };
      const known = this._entries.get(key);
      if (known !== undefined) known.acked.forEach((flag, i) => { if (flag) entry.acked[i] = 1; });
      this._entries.set(key, entry);
      for (let index = 0; index < count; index += 1) {
        if (entry.acked[index]) {
          skipped += 1;
          continue;
        }
        entry.remaining += 1;
        this._queue.push(new Message(decoded.payloads[index], entry, count === 1 ? -1 : index,
          decoded.metadata.length ? decoded.metadata[index] : null));
      }
    }
    if (skipped) this._usePermits(skipped); // the broker charged them too
    while (this._queue.length && this._receiveWaiters.length) {
      const waiter = this._receiveWaiters.shift();
      clearTimeout(waiter.timer);
      waiter.resolve(this._take());
    }
  }

  _usePermits(count) {
    this._permitsUsed += count;
    if (this._permitsUsed >= this._refillThreshold && this._call !== null) {
      this._call.write({ flow: { permits: this._permitsUsed } });
      this._permitsUsed = 0;
    }
  }

  _take() {
    this._usePermits(1);
    return this._queue.shift();
  }

  /** The next message; rejects with TimeoutError after `timeoutMs` (default: wait forever). */
  receive(timeoutMs) {
    if (this._failure) return Promise.reject(this._failure);
    if (this._closed) return Promise.reject(new AlreadyClosedError('the consumer is closed'));
    if (this._queue.length) return Promise.resolve(this._take());
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      if (timeoutMs !== undefined) {
        waiter.timer = setTimeout(() => {
          this._receiveWaiters.splice(this._receiveWaiters.indexOf(waiter), 1);
          reject(new TimeoutError(`no message within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this._receiveWaiters.push(waiter);
    });
  }

  /** Acknowledge a Message or MessageId (grouped; see flushAcknowledgements). */
  acknowledge(messageOrId) {
    const id = messageOrId instanceof MessageId ? messageOrId : messageOrId.messageId;
    const key = `${id.ledgerId}:${id.entryId}`;
    const entry = this._entries.get(key);
    if (entry === undefined) {
      this._queueAck(id.toProto());
      return;
    }
    const index = id.batchIndex < 0 ? 0 : id.batchIndex;
    if (entry.acked[index]) return; // already acknowledged
    entry.acked[index] = 1;
    entry.remaining -= 1;
    if (entry.batchSize === 1 || entry.acked.every((flag) => flag === 1)) {
      this._entries.delete(key);
      this._ackPending = this._ackPending.filter((m) => `${m.ledger_id}:${m.entry_id}` !== key);
      this._queueAck({ ...id.toProto(), batch_index: -1, batch_size: entry.batchSize });
    } else {
      this._queueAck({ ...id.toProto(), batch_index: index, batch_size: entry.batchSize });
    }
  }

  /** Ask the broker to redeliver this message's entry now (a negative acknowledgement). */
  negativeAcknowledge(messageOrId) {
    const id = messageOrId instanceof MessageId ? messageOrId : messageOrId.messageId;
    if (this._call !== null) this._call.write({ redeliver: { message_ids: [{ ...id.toProto(), batch_index: -1 }] } });
  }

  _queueAck(idData) {
    this._ackPending.push(idData);
    if (this._ackTimer === null) this._ackTimer = setTimeout(() => this._sendAcks(false), this._ackGroupTimeMs);
  }

  /** Send the pending acks in one Ack; with `withReceipt`, returns a promise of its receipt. */
  _sendAcks(withReceipt) {
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    const ids = this._ackPending;
    this._ackPending = [];
    if (!ids.length && !withReceipt) return null;
    if (ids.length) {
      this._ackSeq += 1;
      this._unconfirmed.push({ seq: this._ackSeq, ids });
      this._unconfirmedIds += ids.length;
      while (this._unconfirmedIds > MAX_UNCONFIRMED_ACK_IDS && this._unconfirmed.length > 1) {
        this._unconfirmedIds -= this._unconfirmed.shift().ids.length;
      }
    }
    let requestId = 0;
    let receipt = null;
    if (withReceipt || this._receiptMarks.size < MAX_OUTSTANDING_RECEIPTS) {
      requestId = this._nextRequestId;
      this._nextRequestId += 1;
      this._receiptMarks.set(requestId, this._ackSeq);
      if (withReceipt) receipt = new Promise((resolve) => this._receiptWaiters.set(requestId, resolve));
    }
    if (this._call !== null) this._call.write({ ack: { message_ids: ids, request_id: requestId } });
    return receipt;
  }

  _handleAckReceipt(requestId) {
    const mark = this._receiptMarks.get(requestId);
    if (mark === undefined) return;
    while (this._unconfirmed.length && this._unconfirmed[0].seq <= mark) {
      this._unconfirmedIds -= this._unconfirmed.shift().ids.length;
    }
    // Receipts come in order: this one covers every earlier request too.
    for (const earlier of [...this._receiptMarks.keys()]) {
      if (earlier > requestId) continue;
      this._receiptMarks.delete(earlier);
      const resolve = this._receiptWaiters.get(earlier);
      this._receiptWaiters.delete(earlier);
      if (resolve) resolve();
    }
  }

  /** Send pending acks and wait until the broker says they are durable (bounded). */
  async flushAcknowledgements(timeoutMs = this._client._operationTimeoutMs) {
    const receipt = this._sendAcks(true);
    let timer;
    const timeout = new Promise((_resolve, reject) => {
      timer = setTimeout(() => reject(new TimeoutError(`no ack receipt within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      await Promise.race([receipt, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  _fail(error) {
    this._failure = this._failure || error;
    clearTimeout(this._ackTimer);
    for (const waiter of this._receiveWaiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(this._failure);
    }
  }

  /** Make pending acks durable (bounded), then end the stream. Idempotent. */
  async close() {
    if (this._closed) return;
    try {
      if (!this._failure && this._call !== null) await this.flushAcknowledgements(CLOSE_TIMEOUT_MS).catch(() => {});
    } finally {
      this._closed = true;
      this._fail(new AlreadyClosedError('the consumer is closed'));
      const call = this._call;
      if (call !== null) call.cancel();
      await this._running;
      this._client._forget(this);
    }
  }
}

module.exports = { Consumer, SUBSCRIPTION_TYPES, Status };
