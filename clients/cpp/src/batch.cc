#include "batch.h"

#include <lz4frame.h>
#include <zstd.h>

#include <limits>
#include <memory>

namespace strata {

namespace {

constexpr uint64_t kStoredBefore = std::numeric_limits<uint64_t>::max();
constexpr int kZstdLevel = 3;

std::string CompressLz4(const std::string& data) {
  std::string out(LZ4F_compressFrameBound(data.size(), nullptr), '\0');
  size_t written = LZ4F_compressFrame(out.data(), out.size(), data.data(), data.size(), nullptr);
  if (LZ4F_isError(written)) {
    throw std::runtime_error(std::string("lz4: ") + LZ4F_getErrorName(written));
  }
  out.resize(written);
  return out;
}

std::string DecompressLz4(const std::string& data, uint32_t uncompressed_size) {
  LZ4F_dctx* raw = nullptr;
  if (LZ4F_isError(LZ4F_createDecompressionContext(&raw, LZ4F_VERSION))) {
    throw DecodeError("lz4: cannot create a decompression context");
  }
  std::unique_ptr<LZ4F_dctx, decltype(&LZ4F_freeDecompressionContext)> context(
      raw, LZ4F_freeDecompressionContext);
  std::string out(uncompressed_size, '\0');
  size_t produced = 0;
  size_t consumed = 0;
  size_t hint = 1;
  while (hint != 0) {
    size_t out_room = out.size() - produced;
    size_t in_left = data.size() - consumed;
    if (in_left == 0) throw DecodeError("lz4: the frame is truncated");
    hint = LZ4F_decompress(context.get(), out.data() + produced, &out_room, data.data() + consumed,
                           &in_left, nullptr);
    if (LZ4F_isError(hint)) throw DecodeError(std::string("lz4: ") + LZ4F_getErrorName(hint));
    produced += out_room;
    consumed += in_left;
    if (hint != 0 && out_room == 0 && in_left == 0) {
      throw DecodeError("lz4: the frame is larger than its uncompressed_size");
    }
  }
  if (consumed != data.size()) throw DecodeError("lz4: bytes after the frame");
  if (produced != uncompressed_size) {
    throw DecodeError("lz4: decompressed to " + std::to_string(produced) +
                      " bytes, the entry says " + std::to_string(uncompressed_size));
  }
  return out;
}

std::string CompressZstd(const std::string& data) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  // The one-shot API writes the content size into the frame header, as messaging.proto asks.
  size_t written = ZSTD_compress(out.data(), out.size(), data.data(), data.size(), kZstdLevel);
  if (ZSTD_isError(written)) throw std::runtime_error(std::string("zstd: ") + ZSTD_getErrorName(written));
  out.resize(written);
  return out;
}

std::string DecompressZstd(const std::string& data, uint32_t uncompressed_size) {
  std::string out(uncompressed_size, '\0');
  size_t produced = ZSTD_decompress(out.data(), out.size(), data.data(), data.size());
  if (ZSTD_isError(produced)) throw DecodeError(std::string("zstd: ") + ZSTD_getErrorName(produced));
  if (produced != uncompressed_size) {
    throw DecodeError("zstd: decompressed to " + std::to_string(produced) +
                      " bytes, the entry says " + std::to_string(uncompressed_size));
  }
  return out;
}

bool IndexAcked(const v1::Delivery& delivery, uint32_t index) {
  // Bit (i % 64) of word (i / 64), bit 0 the least significant.
  uint32_t word = index / 64;
  if (word >= static_cast<uint32_t>(delivery.acked_batch_indexes_size())) return false;
  return (delivery.acked_batch_indexes(static_cast<int>(word)) >> (index % 64)) & 1u;
}

}  // namespace

MessageId MessageId::Of(uint64_t ledger_id, uint64_t entry_id, uint32_t index, uint32_t count) {
  MessageId id;
  id.ledger_id = ledger_id;
  id.entry_id = entry_id;
  id.batch_index = count == 1 ? -1 : static_cast<int32_t>(index);
  id.batch_size = static_cast<int32_t>(count);
  return id;
}

v1::MessageIdData MessageId::ToProto() const {
  v1::MessageIdData data;
  data.set_ledger_id(ledger_id);
  data.set_entry_id(entry_id);
  data.set_batch_index(batch_index);
  data.set_batch_size(batch_size);
  data.set_partition(partition);
  return data;
}

bool MessageId::StoredBefore() const {
  return ledger_id == kStoredBefore && entry_id == kStoredBefore;
}

std::string Compress(const std::string& data, v1::CompressionType compression) {
  switch (compression) {
    case v1::COMPRESSION_TYPE_UNSPECIFIED:
    case v1::COMPRESSION_TYPE_NONE:
      return data;
    case v1::COMPRESSION_TYPE_LZ4:
      return CompressLz4(data);
    case v1::COMPRESSION_TYPE_ZSTD:
      return CompressZstd(data);
    default:
      throw std::invalid_argument("unknown compression type " + std::to_string(compression));
  }
}

std::string Decompress(const std::string& data, v1::CompressionType compression,
                       uint32_t uncompressed_size) {
  if (uncompressed_size > kMaxUncompressedBytes) {
    throw DecodeError("uncompressed_size " + std::to_string(uncompressed_size) + " is over " +
                      std::to_string(kMaxUncompressedBytes) + " bytes");
  }
  switch (compression) {
    case v1::COMPRESSION_TYPE_UNSPECIFIED:
    case v1::COMPRESSION_TYPE_NONE:
      if (data.size() != uncompressed_size) {
        throw DecodeError("payload of " + std::to_string(data.size()) +
                          " bytes, the entry says " + std::to_string(uncompressed_size));
      }
      return data;
    case v1::COMPRESSION_TYPE_LZ4:
      return DecompressLz4(data, uncompressed_size);
    case v1::COMPRESSION_TYPE_ZSTD:
      return DecompressZstd(data, uncompressed_size);
    default:
      throw DecodeError("unknown compression type " + std::to_string(compression));
  }
}

v1::ProducerBatch EncodeBatch(const std::vector<OutgoingMessage>& messages, uint64_t sequence_id,
                              v1::CompressionType compression, int64_t publish_time_ms) {
  if (messages.empty()) throw std::invalid_argument("a batch holds at least one message");
  v1::MessageBatch batch;
  bool any_metadata = false;
  for (const OutgoingMessage& message : messages) {
    any_metadata = any_metadata || message.partition_key || !message.properties.empty() ||
                   message.event_time_ms != 0;
  }
  for (const OutgoingMessage& message : messages) {
    batch.add_payloads(message.payload);
    if (!any_metadata) continue;  // metadata is either empty or one entry per payload
    v1::SingleMessageMetadata* metadata = batch.add_metadata();
    if (message.partition_key) metadata->set_partition_key(*message.partition_key);
    metadata->set_event_time_ms(message.event_time_ms);
    for (const auto& [name, value] : message.properties) (*metadata->mutable_properties())[name] = value;
  }
  std::string encoded = batch.SerializeAsString();
  v1::ProducerBatch out;
  out.set_sequence_id(sequence_id);
  out.set_num_messages(static_cast<uint32_t>(messages.size()));
  out.set_compression(compression == v1::COMPRESSION_TYPE_UNSPECIFIED ? v1::COMPRESSION_TYPE_NONE
                                                                      : compression);
  out.set_uncompressed_size(static_cast<uint32_t>(encoded.size()));
  out.set_publish_time_ms(publish_time_ms);
  out.set_payload(Compress(encoded, compression));
  // Key_Shared dispatches a batch by its first message's key (no ordering keys here).
  if (messages.front().partition_key) out.set_sticky_key(*messages.front().partition_key);
  return out;
}

uint32_t ChargedPermits(const v1::Delivery& delivery) {
  v1::StoredEntry entry;
  if (!entry.ParseFromString(delivery.entry()) || entry.num_messages() == 0) return 1;
  return entry.num_messages();
}

std::vector<ReceivedMessage> DecodeDelivery(const v1::Delivery& delivery) {
  v1::StoredEntry entry;
  if (!entry.ParseFromString(delivery.entry())) throw DecodeError("the entry is not a StoredEntry");
  if (entry.has_chunk() && entry.chunk().num_chunks() > 0) {
    throw DecodeError("chunked messages are not supported by this client");
  }
  std::string raw = Decompress(entry.payload(), entry.compression(), entry.uncompressed_size());
  v1::MessageBatch batch;
  if (!batch.ParseFromString(raw)) throw DecodeError("the payload is not a MessageBatch");
  const uint32_t count = entry.num_messages();
  if (static_cast<uint32_t>(batch.payloads_size()) != count) {
    throw DecodeError("the entry claims " + std::to_string(count) + " messages and holds " +
                      std::to_string(batch.payloads_size()));
  }
  if (batch.metadata_size() != 0 && batch.metadata_size() != batch.payloads_size()) {
    throw DecodeError("metadata for " + std::to_string(batch.metadata_size()) + " of " +
                      std::to_string(count) + " messages");
  }
  std::vector<ReceivedMessage> messages;
  messages.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    if (IndexAcked(delivery, i)) continue;
    ReceivedMessage message;
    message.id = MessageId::Of(delivery.ledger_id(), delivery.entry_id(), i, count);
    message.payload = batch.payloads(static_cast<int>(i));
    message.publish_time_ms = entry.publish_time_ms();
    message.producer_name = entry.producer_name();
    message.sequence_id = entry.sequence_id() + i;
    message.redelivery_count = delivery.redelivery_count();
    if (batch.metadata_size() != 0) {
      const v1::SingleMessageMetadata& metadata = batch.metadata(static_cast<int>(i));
      if (metadata.has_partition_key()) message.partition_key = metadata.partition_key();
      if (metadata.has_ordering_key()) message.ordering_key = metadata.ordering_key();
      message.event_time_ms = metadata.event_time_ms();
      message.properties.insert(metadata.properties().begin(), metadata.properties().end());
    }
    messages.push_back(std::move(message));
  }
  return messages;
}

}  // namespace strata
