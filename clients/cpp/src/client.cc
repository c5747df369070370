#include "client.h"

#include <chrono>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace strata {

namespace {

constexpr char kErrorDomain[] = "strata.io";
constexpr char kTopicNotOwned[] = "TOPIC_NOT_OWNED";
// messaging.proto: a client that accepts messages up to max_message_size_bytes (5 MiB by
// default) raises its receive limit to that plus 1 MiB.
constexpr int kReceiveLimitBytes = 6 * 1024 * 1024;
constexpr int kKeepAliveMs = 30'000;
constexpr int kKeepAliveTimeoutMs = 10'000;
constexpr size_t kAckBatchIds = 1000;

std::string StripScheme(const std::string& url) {
  for (const char* scheme : {"grpc://", "strata://"}) {
    std::string prefix(scheme);
    if (url.rfind(prefix, 0) == 0) return url.substr(prefix.size());
  }
  return url;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The owner a TOPIC_NOT_OWNED refusal names, or "" when it names none.
std::string OwnerFrom(const StrataError& error) {
  if (error.code() != grpc::StatusCode::FAILED_PRECONDITION || error.reason() != kTopicNotOwned) {
    return "";
  }
  auto owner = error.metadata().find("owner");
  return owner == error.metadata().end() ? "" : owner->second;
}

// Runs `open(address)` at the broker that serves `topic`; when it is refused with
// TOPIC_NOT_OWNED, again at the owner the refusal names. `open` returns the refusal, or
// nothing once the stream is open.
template <typename Open>
void OpenAtOwner(Client* client, const std::string& topic, const std::string& what, Open open) {
  std::string address = client->Lookup(topic);
  for (int hop = 0; hop <= client->options().max_redirects; ++hop) {
    std::optional<StrataError> refused = open(address);
    if (!refused) return;
    std::string owner = OwnerFrom(*refused);
    if (owner.empty()) throw *refused;
    address = owner;
  }
  throw StrataError(grpc::StatusCode::UNAVAILABLE, what + ": too many redirects");
}

}  // namespace

StrataError::StrataError(grpc::StatusCode code, const std::string& message, std::string reason,
                         std::map<std::string, std::string> metadata)
    : std::runtime_error(message),
      code_(code),
      reason_(std::move(reason)),
      metadata_(std::move(metadata)) {}

StrataError StrataError::FromStatus(const grpc::Status& status, const std::string& what) {
  std::string reason;
  std::map<std::string, std::string> metadata;
  // Rich details: a google.rpc.Status in the grpc-status-details-bin trailer.
  google::rpc::Status details;
  if (!status.error_details().empty() && details.ParseFromString(status.error_details())) {
    for (const google::protobuf::Any& any : details.details()) {
      google::rpc::ErrorInfo info;
      if (any.Is<google::rpc::ErrorInfo>() && any.UnpackTo(&info) && info.domain() == kErrorDomain) {
        reason = info.reason();
        metadata.insert(info.metadata().begin(), info.metadata().end());
      }
    }
  }
  return StrataError(status.error_code(), what + ": " + status.error_message(), reason, metadata);
}

Client::Client(ClientOptions options)
    : options_(std::move(options)), service_address_(StripScheme(options_.service_url)) {}

std::shared_ptr<grpc::Channel> Client::ChannelTo(const std::string& address) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = channels_.find(address);
  if (found != channels_.end()) return found->second;
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(kReceiveLimitBytes);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepAliveMs);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepAliveTimeoutMs);
  auto channel =
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), arguments);
  channels_[address] = channel;
  return channel;
}

void Client::Prepare(grpc::ClientContext* context, bool with_deadline) const {
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
  if (with_deadline) context->set_deadline(std::chrono::system_clock::now() + options_.call_timeout);
}

std::string Client::Lookup(const std::string& topic) {
  std::string address = service_address_;
  bool authoritative = false;
  for (int hop = 0; hop <= options_.max_redirects; ++hop) {
    auto stub = v1::MessagingService::NewStub(ChannelTo(address));
    grpc::ClientContext context;
    Prepare(&context, true);
    v1::LookupRequest request;
    request.set_topic(topic);
    request.set_authoritative(authoritative);
    v1::LookupResponse response;
    grpc::Status status = stub->Lookup(&context, request, &response);
    if (!status.ok()) throw StrataError::FromStatus(status, "lookup of " + topic + " at " + address);
    // An empty broker_address means the broker asked.
    std::string next = response.broker_address().empty() ? address : response.broker_address();
    if (response.result() == v1::LookupResponse::CONNECT) return next;
    if (response.result() != v1::LookupResponse::REDIRECT) {
      throw StrataError(grpc::StatusCode::INTERNAL, "lookup of " + topic + ": unknown result " +
                                                        std::to_string(response.result()));
    }
    address = next;
    authoritative = response.authoritative();
  }
  throw StrataError(grpc::StatusCode::UNAVAILABLE, "lookup of " + topic + ": more than " +
                                                       std::to_string(options_.max_redirects) +
                                                       " redirects");
}

std::unique_ptr<Producer> Client::CreateProducer(const ProducerOptions& options) {
  return std::make_unique<Producer>(this, options);
}

std::unique_ptr<Consumer> Client::Subscribe(const ConsumerOptions& options) {
  return std::make_unique<Consumer>(this, options);
}

// ---------------------------------------------------------------------------------------
// Producer

Producer::Producer(Client* client, ProducerOptions options)
    : client_(client), options_(std::move(options)) {
  if (options_.batch_max_messages == 0) throw std::invalid_argument("batch_max_messages is 0");
  if (options_.max_pending_batches == 0) throw std::invalid_argument("max_pending_batches is 0");
  Open();
}

Producer::~Producer() {
  if (!closed_) {
    try {
      Close();
    } catch (const std::exception&) {
      // A destructor reports nothing; Close() reports to callers that ask.
    }
  }
}

void Producer::Open() {
  const std::string what = "producer on " + options_.topic;
  OpenAtOwner(client_, options_.topic, what, [&](const std::string& address) -> std::optional<StrataError> {
    stub_ = v1::MessagingService::NewStub(client_->ChannelTo(address));
    context_ = std::make_unique<grpc::ClientContext>();
    client_->Prepare(context_.get(), false);
    stream_ = stub_->Produce(context_.get());
    v1::ProduceRequest open;
    open.mutable_open()->set_topic(options_.topic);
    open.mutable_open()->set_producer_name(options_.producer_name);
    v1::ProduceResponse response;
    if (!stream_->Write(open) || !stream_->Read(&response)) {
      return StrataError::FromStatus(stream_->Finish(), what);
    }
    if (!response.has_opened()) {
      context_->TryCancel();
      stream_->Finish();
      throw StrataError(grpc::StatusCode::INTERNAL, "the broker answered open without `opened`");
    }
    topic_ = response.opened().topic();
    producer_name_ = response.opened().producer_name();
    last_sequence_id_ = response.opened().last_sequence_id();
    next_sequence_id_ = static_cast<uint64_t>(last_sequence_id_ + 1);
    reader_ = std::thread([this] { ReadReceipts(); });
    return std::nullopt;
  });
}

uint64_t Producer::Send(OutgoingMessage message, ReceiptCallback on_receipt) {
  if (closed_) throw std::logic_error("the producer is closed");
  uint64_t sequence_id = next_sequence_id_++;
  open_batch_.push_back(std::move(message));
  open_callbacks_.push_back(std::move(on_receipt));
  if (open_batch_.size() >= options_.batch_max_messages) SendOpenBatch();
  return sequence_id;
}

void Producer::SendOpenBatch() {
  if (open_batch_.empty()) return;
  uint64_t first = next_sequence_id_ - open_batch_.size();
  v1::ProduceRequest request;
  *request.mutable_publish()->add_batches() =
      EncodeBatch(open_batch_, first, options_.compression, NowMs());
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] {
      return stream_ended_ || pending_.size() < options_.max_pending_batches;
    });
    if (stream_ended_) {
      lock.unlock();
      Fail();
    }
    pending_.push_back(PendingBatch{first, std::move(open_callbacks_)});
  }
  open_batch_.clear();
  open_callbacks_.clear();
  if (!stream_->Write(request)) Fail();
}

void Producer::ReadReceipts() {
  v1::ProduceResponse response;
  while (stream_->Read(&response)) {
    if (!response.has_receipts()) continue;
    for (const v1::SendReceipt& receipt : response.receipts().receipts()) {
      PendingBatch batch;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        // Receipts come strictly in sequence order (messaging.proto, Produce).
        if (pending_.empty() || pending_.front().sequence_id != receipt.sequence_id()) {
          protocol_error_ = "a receipt for sequence id " + std::to_string(receipt.sequence_id()) +
                            " out of order";
          context_->TryCancel();
          break;
        }
        batch = std::move(pending_.front());
        pending_.pop_front();
      }
      const uint32_t count = static_cast<uint32_t>(batch.callbacks.size());
      for (uint32_t i = 0; i < count; ++i) {
        if (batch.callbacks[i]) {
          batch.callbacks[i](batch.sequence_id + i,
                             MessageId::Of(receipt.ledger_id(), receipt.entry_id(), i, count));
        }
      }
      changed_.notify_all();
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  stream_ended_ = true;
  changed_.notify_all();
}

void Producer::Flush() {
  SendOpenBatch();
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return stream_ended_ || pending_.empty(); });
  if (!pending_.empty()) {
    lock.unlock();
    Fail();
  }
}

void Producer::Close() {
  if (closed_) return;
  Flush();
  closed_ = true;
  stream_->WritesDone();
  reader_.join();
  grpc::Status status = stream_->Finish();
  if (!status.ok()) throw StrataError::FromStatus(status, "producer " + producer_name_);
}

void Producer::Fail() {
  // The stream ended with batches in flight: the reader stopped; report the broker's status.
  closed_ = true;
  context_->TryCancel();
  if (reader_.joinable()) reader_.join();
  grpc::Status status = stream_->Finish();
  std::string what = "producer " + producer_name_ + " on " + topic_;
  if (!protocol_error_.empty()) throw StrataError(grpc::StatusCode::INTERNAL, what + ": " + protocol_error_);
  if (status.ok()) throw StrataError(grpc::StatusCode::UNAVAILABLE, what + ": the stream ended");
  throw StrataError::FromStatus(status, what);
}

// ---------------------------------------------------------------------------------------
// Consumer

Consumer::Consumer(Client* client, ConsumerOptions options)
    : client_(client), options_(std::move(options)) {
  if (options_.receiver_queue_size == 0) throw std::invalid_argument("receiver_queue_size is 0");
  Open();
}

Consumer::~Consumer() {
  if (!closed_) {
    try {
      Close();
    } catch (const std::exception&) {
      // As in ~Producer.
    }
  }
}

void Consumer::Open() {
  const std::string what = "subscription " + options_.subscription + " on " + options_.topic;
  OpenAtOwner(client_, options_.topic, what, [&](const std::string& address) -> std::optional<StrataError> {
    stub_ = v1::MessagingService::NewStub(client_->ChannelTo(address));
    context_ = std::make_unique<grpc::ClientContext>();
    client_->Prepare(context_.get(), false);
    stream_ = stub_->Consume(context_.get());
    v1::ConsumeRequest request;
    v1::Subscribe* subscribe = request.mutable_subscribe();
    subscribe->set_topic(options_.topic);
    subscribe->set_subscription(options_.subscription);
    subscribe->set_type(options_.type);
    subscribe->set_initial_position(options_.initial_position);
    subscribe->set_consumer_name(options_.consumer_name);
    v1::ConsumeResponse response;
    if (!stream_->Write(request) || !stream_->Read(&response)) {
      return StrataError::FromStatus(stream_->Finish(), what);
    }
    if (!response.has_subscribed()) {
      context_->TryCancel();
      stream_->Finish();
      throw StrataError(grpc::StatusCode::INTERNAL,
                        "the broker answered subscribe without `subscribed`");
    }
    consumer_name_ = response.subscribed().consumer_name();
    reader_ = std::thread([this] { ReadResponses(); });
    v1::ConsumeRequest flow;
    flow.mutable_flow()->set_permits(options_.receiver_queue_size);
    Write(flow);
    return std::nullopt;
  });
}

void Consumer::ReadResponses() {
  v1::ConsumeResponse response;
  while (stream_->Read(&response)) {
    std::lock_guard<std::mutex> lock(mutex_);
    switch (response.response_case()) {
      case v1::ConsumeResponse::kDeliveries:
        for (const v1::Delivery& delivery : response.deliveries().deliveries()) {
          uint32_t charged = ChargedPermits(delivery);
          try {
            std::vector<ReceivedMessage> messages = DecodeDelivery(delivery);
            // Indexes acknowledged before were charged too: they count as used at once.
            used_permits_ += charged - static_cast<uint32_t>(messages.size());
            for (ReceivedMessage& message : messages) incoming_.push_back(std::move(message));
          } catch (const DecodeError&) {
            used_permits_ += charged;
            undecodable_.push_back(MessageId::Of(delivery.ledger_id(), delivery.entry_id(), 0, 1));
          }
        }
        break;
      case v1::ConsumeResponse::kAckReceipt:
        ack_receipts_[response.ack_receipt().request_id()] = response.ack_receipt().error();
        break;
      case v1::ConsumeResponse::kActiveConsumerChange:
        active_.store(response.active_consumer_change().is_active());
        break;
      default:
        break;  // seek_done and last_message_id answer requests this client does not make
    }
    changed_.notify_all();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  stream_ended_ = true;
  changed_.notify_all();
}

void Consumer::Write(const v1::ConsumeRequest& request) {
  if (!stream_->Write(request)) Fail();
}

void Consumer::GrantUsedPermits(bool force) {
  // messaging.proto: grant again what was used once half of the queue size is used.
  uint32_t used = 0;
  std::vector<MessageId> drop;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!force && used_permits_ < options_.receiver_queue_size / 2) return;
    used = used_permits_;
    used_permits_ = 0;
    drop.swap(undecodable_);
  }
  for (const MessageId& id : drop) Acknowledge(id);
  if (used == 0) return;
  v1::ConsumeRequest flow;
  flow.mutable_flow()->set_permits(used);
  Write(flow);
}

std::optional<ReceivedMessage> Consumer::Receive(std::chrono::milliseconds timeout) {
  if (closed_) throw std::logic_error("the consumer is closed");
  std::optional<ReceivedMessage> message;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait_for(lock, timeout, [this] { return stream_ended_ || !incoming_.empty(); });
    if (!incoming_.empty()) {
      message = std::move(incoming_.front());
      incoming_.pop_front();
      ++used_permits_;
    } else if (stream_ended_) {
      lock.unlock();
      Fail();
    }
  }
  GrantUsedPermits(false);
  return message;
}

void Consumer::Acknowledge(const MessageId& id) {
  queued_acks_.push_back(id);
  if (queued_acks_.size() < kAckBatchIds) return;
  v1::ConsumeRequest request;
  for (const MessageId& queued : queued_acks_) *request.mutable_ack()->add_message_ids() = queued.ToProto();
  queued_acks_.clear();
  Write(request);
}

std::string Consumer::FlushAcknowledgements(std::chrono::milliseconds timeout) {
  GrantUsedPermits(true);
  v1::ConsumeRequest request;
  for (const MessageId& queued : queued_acks_) *request.mutable_ack()->add_message_ids() = queued.ToProto();
  queued_acks_.clear();
  const uint64_t request_id = next_request_id_++;
  request.mutable_ack()->set_request_id(request_id);
  Write(request);
  std::unique_lock<std::mutex> lock(mutex_);
  bool answered = changed_.wait_for(lock, timeout, [this, request_id] {
    return stream_ended_ || ack_receipts_.count(request_id) != 0;
  });
  auto receipt = ack_receipts_.find(request_id);
  if (receipt != ack_receipts_.end()) {
    std::string error = receipt->second;
    ack_receipts_.erase(receipt);
    return error;
  }
  lock.unlock();
  if (!answered) {
    throw StrataError(grpc::StatusCode::DEADLINE_EXCEEDED,
                      "no AckReceipt for request " + std::to_string(request_id));
  }
  Fail();
}

void Consumer::Close() {
  if (closed_) return;
  closed_ = true;
  stream_->WritesDone();
  reader_.join();
  grpc::Status status = stream_->Finish();
  if (!status.ok()) throw StrataError::FromStatus(status, "consumer " + consumer_name_);
}

void Consumer::Fail() {
  closed_ = true;
  context_->TryCancel();
  if (reader_.joinable()) reader_.join();
  grpc::Status status = stream_->Finish();
  std::string what = "consumer " + consumer_name_ + " on " + options_.topic;
  if (status.ok()) throw StrataError(grpc::StatusCode::UNAVAILABLE, what + ": the stream ended");
  throw StrataError::FromStatus(status, what);
}

}  // namespace strata
