'use strict';
// The producer: batching, the Produce stream, receipts, reconnects (as strata/client/_producer.py).
//
// Wire behaviour: open → opened (name, last persisted sequence id, max message size); batches
// go as ProducerBatch (first sequence id, count, compression, MessageBatch payload), several
// per PublishBatches request; receipts come in sequence order, and message i of a batch of n
// becomes MessageId(ledger, entry, n === 1 ? -1 : i). After a retriable failure the stream is
// reopened (same producer name) and every batch without a receipt is sent again in order: the
// broker drops what it already persisted (deduplication by producer name and sequence id).
const { StrataError, TimeoutError, AlreadyClosedError } = require('./errors');
const { Reconnector, serveCall } = require('./connection');
const { encodeBatch, compressionName, MessageId, PAYLOAD_OVERHEAD_BYTES } = require('./batch');

const DEFAULT_MAX_MESSAGE_SIZE_BYTES = 5 * 1024 * 1024;
// Several ready batches share one PublishBatches request up to this size.
const MAX_PUBLISH_REQUEST_BYTES = 4 * 1024 * 1024;
// With this many batches awaiting receipts an open batch waits for its delay; with fewer it goes
// at the end of the current turn of the event loop (the Python SDK's window of two).
const HOLD_AFTER_BATCHES_IN_FLIGHT = 2;

class Producer {
  constructor(client, topic, options = {}) {
    this._client = client;
    this._protos = client._protos;
    this.topic = topic;
    this.producerName = options.producerName || '';
    this._batchingEnabled = options.batchingEnabled !== false;
    this._batchMaxMessages = this._batchingEnabled ? (options.batchingMaxMessages ?? 1000) : 1;
    this._batchMaxBytes = options.batchingMaxAllowedSizeInBytes ?? 128 * 1024;
    this._batchDelayMs = options.batchingMaxPublishDelayMs ?? 10;
    this._maxPendingMessages = options.maxPendingMessages ?? 10_000;
    this._sendTimeoutMs = options.sendTimeoutMs ?? 30_000;
    this._compression = compressionName(options.compressionType);
    this._maxMessageSizeBytes = DEFAULT_MAX_MESSAGE_SIZE_BYTES;
    this.lastSequenceId = -1;
    this._nextSequenceId = 0;
    this._batch = null; // {payloads, metadata|null, waiters, sizeBytes, sequenceId}
    this._batchTimer = null;
    this._pending = []; // sealed batches awaiting receipts, in sequence order
    this._unsent = 0; // index into _pending of the first batch not written on this stream
    this._pendingMessages = 0;
    this._spaceWaiters = [];
    this._call = null;
    this._closed = false;
    this._failure = null;
    this._reconnector = new Reconnector(client._pool, topic, {
      shouldStop: (error) => this._closed || this._stopRetrying(error),
    });
  }

  /** Opens the stream; resolves once the broker answered `opened` (bounded). */
  _start(timeoutMs) {
    return new Promise((resolve, reject) => {
      this._onOpened = resolve;
      this._downSince = Date.now();
      this._openDeadline = Date.now() + timeoutMs;
      this._expireTimer = setInterval(() => this._expire(), 100);
      this._running = this._reconnector.run((stub) => this._attempt(stub)).then((error) => {
        this._fail(error);
        reject(error);
      });
    });
  }

  _stopRetrying() {
    if (this._onOpened !== null) return Date.now() > this._openDeadline;
    // Give up once the stream has been down for the send timeout and nothing can make it.
    return this._sendTimeoutMs > 0 && this._pending.length === 0 && Date.now() - this._downSince > this._sendTimeoutMs;
  }

  _attempt(stub) {
    const call = stub.Produce();
    let opened = false;
    const served = serveCall(call, this._protos, (response) => {
      if (!opened) {
        if (response.response !== 'opened') throw new StrataError('the first answer was not opened', { retriable: true });
        opened = true;
        this._handleOpened(response.opened, call);
        return;
      }
      if (response.response !== 'receipts') throw new StrataError('the broker sent something other than receipts', { retriable: true });
      this._handleReceipts(response.receipts.receipts);
    }, () => opened);
    call.write({ open: { topic: this.topic, producer_name: this.producerName } });
    return served.finally(() => {
      if (this._call === call) this._call = null;
      this._downSince = Date.now();
    });
  }

  _handleOpened(opened, call) {
    this._reconnector.opened();
    const maxSize = Number(opened.max_message_size_bytes);
    if (maxSize) {
      this._maxMessageSizeBytes = maxSize;
      this._batchMaxBytes = Math.min(this._batchMaxBytes, maxSize);
    }
    if (this._onOpened !== null) {
      this.topic = opened.topic || this.topic;
      this.producerName = opened.producer_name;
      this.lastSequenceId = Number(opened.last_sequence_id);
      this._nextSequenceId = Math.max(0, this.lastSequenceId + 1);
      const onOpened = this._onOpened;
      this._onOpened = null;
      onOpened(this);
    }
    this._call = call;
    this._unsent = 0; // everything without a receipt goes again, in order
    this._writePending();
  }

  /**
   * Send one message; resolves with its MessageId once the broker has it durably.
   * options: partitionKey, properties ({string: string}), eventTimestamp (ms since the epoch).
   */
  async send(data, options = {}) {
    const payload = Buffer.isBuffer(data) ? data : Buffer.from(data);
    while (this._pendingMessages >= this._maxPendingMessages && !this._closed && !this._failure) {
      await new Promise((resolve) => this._spaceWaiters.push(resolve));
    }
    if (this._failure) throw this._failure;
    if (this._closed) throw new AlreadyClosedError('the producer is closed');
    return new Promise((resolve, reject) => this._enqueue(payload, options, { resolve, reject }));
  }

  _enqueue(payload, options, waiter) {
    let metadata = null;
    let size = payload.length + PAYLOAD_OVERHEAD_BYTES;
    if (options.partitionKey != null || options.properties || options.eventTimestamp) {
      metadata = { properties: options.properties || {}, event_time_ms: options.eventTimestamp || 0 };
      if (options.partitionKey != null) metadata.partition_key = String(options.partitionKey);
      size += 2 * PAYLOAD_OVERHEAD_BYTES + Buffer.byteLength(JSON.stringify(metadata));
    }
    if (size > this._maxMessageSizeBytes) {
      waiter.reject(new StrataError(`message of ${payload.length} bytes exceeds the broker's limit of ${this._maxMessageSizeBytes} bytes`));
      return;
    }
    if (this._batch !== null && this._batch.sizeBytes + size > this._batchMaxBytes) this._seal();
    if (this._batch === null) {
      this._batch = { payloads: [], metadata: null, waiters: [], sizeBytes: 0, sequenceId: this._nextSequenceId };
      if (this._pending.length >= HOLD_AFTER_BATCHES_IN_FLIGHT) {
        this._batchTimer = setTimeout(() => this._onBatchTimer(), this._batchDelayMs);
      } else {
        this._batchTimer = setImmediate(() => this._onBatchTimer());
      }
    }
    const batch = this._batch;
    if (metadata !== null && batch.metadata === null) batch.metadata = batch.payloads.map(() => ({}));
    if (batch.metadata !== null) batch.metadata.push(metadata || {});
    batch.payloads.push(payload);
    batch.waiters.push(waiter);
    batch.sizeBytes += size;
    this._nextSequenceId += 1;
    this._pendingMessages += 1;
    if (batch.payloads.length >= this._batchMaxMessages || batch.sizeBytes >= this._batchMaxBytes) this._seal();
  }

  _onBatchTimer() {
    this._batchTimer = null;
    if (this._batch !== null) this._seal();
  }

  _seal() {
    const batch = this._batch;
    this._batch = null;
    if (this._batchTimer !== null) {
      clearTimeout(this._batchTimer);
      clearImmediate(this._batchTimer);
      this._batchTimer = null;
    }
    const { payload, uncompressedSize } = encodeBatch(this._protos, batch.payloads, batch.metadata, this._compression);
    const count = batch.payloads.length;
    if (payload.length > this._maxMessageSizeBytes) {
      const error = new StrataError(`batch of ${payload.length} bytes exceeds the broker's limit`);
      for (const waiter of batch.waiters) waiter.reject(error);
      this._release(count);
      return;
    }
    let settle;
    const done = new Promise((resolve) => { settle = resolve; });
    this._pending.push({
      done,
      settle,
      request: {
        sequence_id: batch.sequenceId,
        num_messages: count,
        compression: this._compression,
        uncompressed_size: uncompressedSize,
        publish_time_ms: Date.now(),
        payload,
        sticky_key: batch.metadata && batch.metadata[0].partition_key ? batch.metadata[0].partition_key : '',
      },
      sequenceId: batch.sequenceId,
      count,
      waiters: batch.waiters,
      deadline: this._sendTimeoutMs ? Date.now() + this._sendTimeoutMs : Infinity,
    });
    this._writePending();
  }

  _writePending() {
    const call = this._call;
    if (call === null) return;
    while (this._unsent < this._pending.length) {
      const batches = [];
      let size = 0;
      while (this._unsent < this._pending.length) {
        const next = this._pending[this._unsent].request;
        if (batches.length && size + next.payload.length > MAX_PUBLISH_REQUEST_BYTES) break;
        batches.push(next);
        size += next.payload.length;
        this._unsent += 1;
      }
      call.write({ publish: { batches } });
    }
  }

  _handleReceipts(receipts) {
    for (const receipt of receipts) {
      const sequenceId = Number(receipt.sequence_id);
      const head = this._pending[0];
      if (head === undefined || sequenceId < head.sequenceId) continue; // already timed out
      if (sequenceId !== head.sequenceId || receipt.num_messages !== head.count) {
        throw new StrataError(`receipt for sequence id ${sequenceId} does not match the oldest pending batch ${head.sequenceId}`, { retriable: true });
      }
      this._pending.shift();
      this._unsent = Math.max(0, this._unsent - 1);
      this.lastSequenceId = sequenceId + head.count - 1;
      head.waiters.forEach((waiter, index) => {
        waiter.resolve(new MessageId(receipt.ledger_id, receipt.entry_id, head.count === 1 ? -1 : index, -1, head.count));
      });
      this._release(head.count);
      head.settle();
    }
    if (this._pending.length < HOLD_AFTER_BATCHES_IN_FLIGHT && this._batch !== null) this._seal();
  }

  _release(count) {
    this._pendingMessages -= count;
    for (const wake of this._spaceWaiters.splice(0)) wake();
  }

  _expire() {
    const now = Date.now();
    if (this._pending.length && this._pending[0].deadline <= now) {
      this._failPending(new TimeoutError(`no receipt within sendTimeoutMs=${this._sendTimeoutMs}`));
    }
  }

  _failPending(error) {
    const failed = this._pending.splice(0);
    this._unsent = 0;
    for (const batch of failed) {
      for (const waiter of batch.waiters) waiter.reject(error);
      this._release(batch.count);
      batch.settle();
    }
  }

  _fail(error) {
    this._failure = this._failure || error;
    clearInterval(this._expireTimer);
    if (this._batch !== null) this._seal();
    this._failPending(this._failure);
    for (const wake of this._spaceWaiters.splice(0)) wake();
  }

  /** Send the open batch now; resolves once every message sent so far has a receipt. */
  async flush() {
    if (this._batch !== null) this._seal();
    const last = this._pending[this._pending.length - 1];
    if (last !== undefined) await last.done;
    if (this._failure && !(this._failure instanceof AlreadyClosedError)) throw this._failure;
  }

  /** Flush (bounded by the send timeout), then end the stream. Idempotent. */
  async close() {
    if (this._closed) return;
    try {
      if (!this._failure) await this.flush();
    } finally {
      this._closed = true;
      const call = this._call;
      if (call !== null) call.end();
      if (call !== null) call.cancel();
      this._fail(new AlreadyClosedError('the producer is closed'));
      await this._running;
      this._client._forget(this);
    }
  }
}

module.exports = { Producer };
