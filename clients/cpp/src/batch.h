// Batches and message ids as messaging.proto defines them: a ProducerBatch's payload is a
// serialized MessageBatch, compressed; a Delivery's entry is a serialized StoredEntry.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "strata/v1/messaging.pb.h"

namespace strata {

// The largest payload a client decompresses, in bytes: a broker batch is at most 5 MiB
// compressed by default; a bigger claim is refused before any memory is taken for it.
constexpr uint32_t kMaxUncompressedBytes = 128u * 1024u * 1024u;

// An entry the client cannot decode (bad compression, sizes that disagree, a chunk).
class DecodeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One message as the application gives it to a producer.
struct OutgoingMessage {
  std::string payload;
  std::optional<std::string> partition_key;
  std::map<std::string, std::string> properties;
  int64_t event_time_ms = 0;
};

// The canonical message id of messaging.proto: message i of an entry of n messages is
// (ledger_id, entry_id, n == 1 ? -1 : i), partition -1 outside partitioned topics.
struct MessageId {
  uint64_t ledger_id = 0;
  uint64_t entry_id = 0;
  int32_t batch_index = -1;
  int32_t batch_size = 1;
  int32_t partition = -1;

  static MessageId Of(uint64_t ledger_id, uint64_t entry_id, uint32_t index, uint32_t count);
  v1::MessageIdData ToProto() const;
  // A receipt for a batch the broker had stored before (deduplication): -1:-1.
  bool StoredBefore() const;
};

// One message handed to the application by a consumer.
struct ReceivedMessage {
  MessageId id;
  std::string payload;
  std::optional<std::string> partition_key;
  std::optional<std::string> ordering_key;
  std::map<std::string, std::string> properties;
  int64_t event_time_ms = 0;
  int64_t publish_time_ms = 0;
  std::string producer_name;
  uint64_t sequence_id = 0;  // of this message: the batch's first id + its index
  uint32_t redelivery_count = 0;
};

std::string Compress(const std::string& data, v1::CompressionType compression);
// Throws DecodeError unless `data` decompresses to exactly `uncompressed_size` bytes.
std::string Decompress(const std::string& data, v1::CompressionType compression,
                       uint32_t uncompressed_size);

// Encodes `messages` (at least one) as one batch whose first sequence id is `sequence_id`.
v1::ProducerBatch EncodeBatch(const std::vector<OutgoingMessage>& messages, uint64_t sequence_id,
                              v1::CompressionType compression, int64_t publish_time_ms);

// Decodes one delivered entry into its messages, leaving out the batch indexes the
// subscription already acknowledged. Throws DecodeError.
std::vector<ReceivedMessage> DecodeDelivery(const v1::Delivery& delivery);

// The number of messages an entry claims (what the broker charged in permits), 1 when the
// entry cannot be read at all.
uint32_t ChargedPermits(const v1::Delivery& delivery);

}  // namespace strata
