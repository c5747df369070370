// A small synchronous Strata client over gRPC's C++ API: lookup with redirects, a producer
// with batching and receipts, a consumer with flow permits and acknowledgements.
//
// Threads: each Producer and Consumer runs one reader thread for its stream; its methods are
// called from one application thread (the only writer). Not done here, as the example asks
// only produce and consume: reconnects after a broker failure, partitioned topics, chunks.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "batch.h"
#include "strata/v1/messaging.grpc.pb.h"

namespace strata {

// A refusal or failure, with the gRPC status and the google.rpc.ErrorInfo it carried.
class StrataError : public std::runtime_error {
 public:
  StrataError(grpc::StatusCode code, const std::string& message, std::string reason = "",
              std::map<std::string, std::string> metadata = {});
  static StrataError FromStatus(const grpc::Status& status, const std::string& what);

  grpc::StatusCode code() const { return code_; }
  // ErrorInfo.reason (domain "strata.io"), empty when the status had none.
  const std::string& reason() const { return reason_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  grpc::StatusCode code_;
  std::string reason_;
  std::map<std::string, std::string> metadata_;
};

struct ClientOptions {
  std::string service_url = "127.0.0.1:6650";  // host:port, or grpc://host:port
  std::string token;                           // sent as `authorization: Bearer <token>`
  int max_redirects = 20;                      // messaging.proto: follow at most 20
  std::chrono::milliseconds call_timeout{30'000};  // lookups and stream handshakes
};

class Producer;
class Consumer;

struct ProducerOptions {
  std::string topic;
  std::string producer_name;  // empty: the broker names it
  v1::CompressionType compression = v1::COMPRESSION_TYPE_NONE;
  size_t batch_max_messages = 1000;
  size_t max_pending_batches = 1000;  // sent without a receipt; Send blocks beyond
};

struct ConsumerOptions {
  std::string topic;
  std::string subscription;
  v1::SubscriptionType type = v1::SUBSCRIPTION_TYPE_EXCLUSIVE;
  v1::InitialPosition initial_position = v1::INITIAL_POSITION_LATEST;
  std::string consumer_name;
  uint32_t receiver_queue_size = 1000;  // permits granted after `subscribed`
};

class Client {
 public:
  explicit Client(ClientOptions options);

  // The broker that serves `topic`, following REDIRECT answers.
  std::string Lookup(const std::string& topic);
  std::unique_ptr<Producer> CreateProducer(const ProducerOptions& options);
  std::unique_ptr<Consumer> Subscribe(const ConsumerOptions& options);

  std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address);
  void Prepare(grpc::ClientContext* context, bool with_deadline) const;
  const ClientOptions& options() const { return options_; }

 private:
  ClientOptions options_;
  std::string service_address_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;
};

class Producer {
 public:
  // Called from the producer's reader thread once the batch holding the message is durable.
  using ReceiptCallback = std::function<void(uint64_t sequence_id, const MessageId& id)>;

  Producer(Client* client, ProducerOptions options);
  ~Producer();
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Adds a message to the open batch (sent once full); returns its sequence id.
  uint64_t Send(OutgoingMessage message, ReceiptCallback on_receipt);
  // Sends the open batch and waits until every message sent so far has its receipt.
  void Flush();
  // Flushes, half-closes the stream and waits for its end.
  void Close();

  const std::string& topic() const { return topic_; }
  const std::string& producer_name() const { return producer_name_; }
  int64_t last_sequence_id() const { return last_sequence_id_; }

 private:
  struct PendingBatch {
    uint64_t sequence_id;
    std::vector<ReceiptCallback> callbacks;
  };
  using Stream = grpc::ClientReaderWriter<v1::ProduceRequest, v1::ProduceResponse>;

  void Open();
  void SendOpenBatch();
  void ReadReceipts();
  [[noreturn]] void Fail();

  Client* client_;
  ProducerOptions options_;
  std::string topic_;
  std::string producer_name_;
  int64_t last_sequence_id_ = -1;
  uint64_t next_sequence_id_ = 0;
  std::vector<OutgoingMessage> open_batch_;
  std::vector<ReceiptCallback> open_callbacks_;

  std::unique_ptr<v1::MessagingService::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<Stream> stream_;
  std::thread reader_;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<PendingBatch> pending_;
  bool stream_ended_ = false;
  std::string protocol_error_;
  bool closed_ = false;
};

class Consumer {
 public:
  Consumer(Client* client, ConsumerOptions options);
  ~Consumer();
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;

  // The next message, or nothing after `timeout`. Grants permits as messages are handed out.
  std::optional<ReceivedMessage> Receive(std::chrono::milliseconds timeout);
  // Queues an individual acknowledgement (sent by the next Flush, or once 1,000 are queued).
  void Acknowledge(const MessageId& id);
  // Sends the queued acknowledgements with a request id and waits for the broker's
  // AckReceipt: its `error` (empty when every id was applied).
  std::string FlushAcknowledgements(std::chrono::milliseconds timeout);
  // Half-closes the stream; the broker sends the pending receipts first.
  void Close();

  const std::string& consumer_name() const { return consumer_name_; }
  bool is_active() const { return active_.load(); }

 private:
  using Stream = grpc::ClientReaderWriter<v1::ConsumeRequest, v1::ConsumeResponse>;

  void Open();
  void ReadResponses();
  void Write(const v1::ConsumeRequest& request);
  void GrantUsedPermits(bool force);
  [[noreturn]] void Fail();

  Client* client_;
  ConsumerOptions options_;
  std::string consumer_name_;
  std::atomic<bool> active_{true};

  std::unique_ptr<v1::MessagingService::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<Stream> stream_;
  std::thread reader_;

  std::vector<MessageId> queued_acks_;
  uint64_t next_request_id_ = 1;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<ReceivedMessage> incoming_;
  uint32_t used_permits_ = 0;       // handed out or skipped since the last grant
  std::vector<MessageId> undecodable_;  // acknowledged and dropped, as Pulsar's clients do
  std::map<uint64_t, std::string> ack_receipts_;
  bool stream_ended_ = false;
  bool closed_ = false;
};

}  // namespace strata
