'use strict';
// The batch encoding (MessageBatch inside ProducerBatch.payload / StoredEntry.payload),
// compression, message ids and the acknowledged-index bitsets. No I/O.
const lz4 = require('lz4-napi');
const zstd = require('@bokuweb/zstd-wasm');

const COMPRESSION = { NONE: 'COMPRESSION_TYPE_NONE', LZ4: 'COMPRESSION_TYPE_LZ4', ZSTD: 'COMPRESSION_TYPE_ZSTD' };
// A decompressed batch larger than this is refused rather than allocated (corrupt entry).
const MAX_UNCOMPRESSED_BATCH_BYTES = 256 * 1024 * 1024;
// A payload inside MessageBatch costs its bytes plus a tag byte and a varint length (≤ 5).
const PAYLOAD_OVERHEAD_BYTES = 6;

let zstdReady = null;
/** The ZSTD codec is WebAssembly and must be instantiated once before use. */
function initCodecs() {
  if (zstdReady === null) zstdReady = zstd.init();
  return zstdReady;
}

function compressionName(type) {
  if (type === undefined || type === null) return COMPRESSION.NONE;
  const name = COMPRESSION[String(type).toUpperCase()];
  if (name === undefined) throw new TypeError(`unknown compression type ${type}: use NONE, LZ4 or ZSTD`);
  return name;
}

function compress(raw, compression) {
  switch (compression) {
    case COMPRESSION.LZ4: return lz4.compressFrameSync(raw);
    case COMPRESSION.ZSTD: return Buffer.from(zstd.compress(raw, 3));
    default: return raw;
  }
}

function decompress(data, compression, uncompressedSize) {
  if (compression === COMPRESSION.NONE || compression === 'COMPRESSION_TYPE_UNSPECIFIED') return data;
  if (uncompressedSize > MAX_UNCOMPRESSED_BATCH_BYTES) {
    throw new Error(`uncompressed size ${uncompressedSize} bytes is too large`);
  }
  let raw;
  if (compression === COMPRESSION.LZ4) raw = lz4.decompressFrameSync(data);
  else if (compression === COMPRESSION.ZSTD) raw = Buffer.from(zstd.decompress(data));
  else throw new Error(`unknown compression type ${compression}`);
  if (raw.length !== uncompressedSize) {
    throw new Error(`batch decompressed to ${raw.length} bytes, its header says ${uncompressedSize}`);
  }
  return raw;
}

/** Serialize a MessageBatch (metadata: empty, or one entry per payload) and compress it. */
function encodeBatch(protos, payloads, metadata, compression) {
  const raw = protos.MessageBatch.encode({ payloads, metadata: metadata || [] }).finish();
  return { payload: compress(Buffer.from(raw.buffer, raw.byteOffset, raw.length), compression), uncompressedSize: raw.length };
}

const ENUM_NAMES = ['COMPRESSION_TYPE_UNSPECIFIED', 'COMPRESSION_TYPE_NONE', 'COMPRESSION_TYPE_LZ4', 'COMPRESSION_TYPE_ZSTD'];

/** A protobufjs 64-bit value (Long or number) as a Number. */
function toNumber(value) {
  return typeof value === 'object' && value !== null ? Number(value.toString()) : Number(value);
}

/** A serialized StoredEntry taken apart down to its messages. */
function decodeEntry(protos, entry) {
  const stored = protos.StoredEntry.decode(entry);
  const compression = ENUM_NAMES[stored.compression] || `unknown (${stored.compression})`;
  const raw = decompress(Buffer.from(stored.payload), compression, stored.uncompressed_size);
  const batch = protos.MessageBatch.decode(raw);
  if (batch.payloads.length !== stored.num_messages) {
    throw new Error(`batch holds ${batch.payloads.length} payloads, its header says ${stored.num_messages}`);
  }
  if (batch.metadata.length && batch.metadata.length !== batch.payloads.length) {
    throw new Error(`batch holds ${batch.metadata.length} metadata entries for ${batch.payloads.length} payloads`);
  }
  return {
    producerName: stored.producer_name,
    sequenceId: toNumber(stored.sequence_id),
    publishTimeMs: toNumber(stored.publish_time_ms),
    payloads: batch.payloads,
    metadata: batch.metadata,
  };
}

/** Delivery.acked_batch_indexes (uint64 words as decimal strings) as one byte per index. */
function ackedFlags(words, batchSize) {
  const flags = new Uint8Array(Math.max(1, batchSize));
  words.forEach((word, position) => {
    let bits = BigInt(word);
    for (let bit = 0; bits !== 0n; bit += 1, bits >>= 1n) {
      const index = position * 64 + bit;
      if ((bits & 1n) === 1n && index < batchSize) flags[index] = 1;
    }
  });
  return flags;
}

const UINT64_MASK = (1n << 64n) - 1n;

/**
 * Identifies one message: (ledgerId, entryId, batchIndex, partition). batchIndex is -1 for an
 * entry of a single message, partition -1 for a topic that is not a partition (both as the
 * Python SDK). batchSize travels with the id for batch-index acks; not part of equality.
 */
class MessageId {
  constructor(ledgerId, entryId, batchIndex = -1, partition = -1, batchSize = 0) {
    this.ledgerId = BigInt(ledgerId);
    this.entryId = BigInt(entryId);
    this.batchIndex = batchIndex;
    this.partition = partition;
    this.batchSize = batchSize;
  }

  /** The id as it travels in MessageIdData (uint64 as decimal strings). */
  toProto() {
    return {
      ledger_id: (this.ledgerId & UINT64_MASK).toString(),
      entry_id: (this.entryId & UINT64_MASK).toString(),
      batch_index: this.batchIndex,
      batch_size: this.batchSize,
      partition: this.partition,
    };
  }

  static fromProto(data) {
    return new MessageId(data.ledger_id, data.entry_id, data.batch_index, data.partition, data.batch_size);
  }

  /** Compact bytes: a serialized MessageIdData, as the Python SDK's MessageId.serialize(). */
  serialize(protos) {
    return Buffer.from(protos.MessageIdData.encode(protos.MessageIdData.fromObject(this.toProto())).finish());
  }

  static deserialize(protos, bytes) {
    const data = protos.MessageIdData.toObject(protos.MessageIdData.decode(bytes), { longs: String, defaults: true });
    return MessageId.fromProto(data);
  }

  /** Publish order within a topic: (ledgerId, entryId, partition, batchIndex). */
  compare(other) {
    const keys = [[this.ledgerId, other.ledgerId], [this.entryId, other.entryId],
      [BigInt(this.partition), BigInt(other.partition)], [BigInt(this.batchIndex), BigInt(other.batchIndex)]];
    for (const [a, b] of keys) if (a !== b) return a < b ? -1 : 1;
    return 0;
  }

  equals(other) {
    return this.compare(other) === 0;
  }

  toString() {
    return `(${this.ledgerId},${this.entryId},${this.batchIndex},${this.partition})`;
  }
}

/** One received message; the consumer makes one per payload of a delivered entry. */
class Message {
  constructor(data, entry, index, metadata) {
    this.data = Buffer.from(data);
    this._entry = entry;
    this._index = index;
    this._metadata = metadata || null;
  }

  get properties() {
    return this._metadata ? { ...this._metadata.properties } : {};
  }

  /** The key given at send, or '' (as Pulsar). */
  get partitionKey() {
    const metadata = this._metadata;
    return metadata && metadata.partition_key != null ? metadata.partition_key : '';
  }

  get eventTimestamp() {
    return this._metadata ? toNumber(this._metadata.event_time_ms) : 0;
  }

  get publishTimestamp() {
    return this._entry.publishTimeMs;
  }

  get redeliveryCount() {
    return this._entry.redeliveryCount;
  }

  get topic() {
    return this._entry.topic;
  }

  get messageId() {
    const e = this._entry;
    return new MessageId(e.ledgerId, e.entryId, this._index, e.partition, e.batchSize);
  }
}

module.exports = {
  COMPRESSION, PAYLOAD_OVERHEAD_BYTES, initCodecs, compressionName, compress, decompress,
  encodeBatch, decodeEntry, ackedFlags, MessageId, Message,
};
