// strata-cpp: produce and consume from C++, one JSON object per message on stdout.
//
//   strata-cpp produce --service-url HOST:PORT --topic T [--messages N] [--payload-prefix P]
//                      [--keys K] [--property NAME=VALUE]... [--compression none|lz4|zstd]
//                      [--batch-size B] [--producer-name NAME] [--token JWT]
//     message i is "<prefix>-<i>", key "key-<i mod K>" (none when K is 0), properties the
//     given ones plus index=<i>; prints {"index", "sequence_id", "message_id"} per receipt.
//
//   strata-cpp consume --service-url HOST:PORT --topic T --subscription S [--messages N]
//                      [--type exclusive|shared|failover|key_shared]
//                      [--initial-position earliest|latest] [--timeout-s S] [--token JWT]
//                      [--ack-also LEDGER:ENTRY]
//     prints each message, acknowledges it, and waits for the broker's AckReceipt;
//     --ack-also adds an id to the last acknowledgement (to show a refused ack's error).
//
// Exit status: 0 done, 1 a failure (the gRPC status and ErrorInfo reason on stderr), 2 a
// usage error, 3 fewer messages than --messages arrived before the timeout.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "client.h"

namespace {

constexpr uint64_t kMaxMessages = 10'000'000;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
          out += escaped;
        } else {
          out += static_cast<char>(c);  // payloads are printed as UTF-8 text
        }
    }
  }
  return out + "\"";
}

std::string JsonId(const strata::MessageId& id) {
  std::ostringstream out;
  out << "{\"ledger_id\":" << id.ledger_id << ",\"entry_id\":" << id.entry_id
      << ",\"batch_index\":" << id.batch_index << ",\"batch_size\":" << id.batch_size
      << ",\"partition\":" << id.partition << "}";
  return out.str();
}

class Arguments {
 public:
  Arguments(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
      std::string name = argv[i];
      if (name.rfind("--", 0) != 0) throw UsageError("unexpected argument " + name);
      if (i + 1 >= argc) throw UsageError(name + " needs a value");
      values_.emplace(name.substr(2), argv[++i]);
    }
  }

  std::string Take(const std::string& name, const std::string& fallback, bool required = false) {
    auto found = values_.find(name);
    if (found == values_.end()) {
      if (required) throw UsageError("--" + name + " is required");
      return fallback;
    }
    std::string value = found->second;
    values_.erase(found);
    return value;
  }

  std::vector<std::string> TakeAll(const std::string& name) {
    std::vector<std::string> all;
    auto range = values_.equal_range(name);
    for (auto it = range.first; it != range.second; ++it) all.push_back(it->second);
    values_.erase(range.first, range.second);
    return all;
  }

  uint64_t TakeCount(const std::string& name, uint64_t fallback, uint64_t maximum) {
    std::string text = Take(name, "");
    if (text.empty()) return fallback;
    size_t used = 0;
    unsigned long long value = 0;
    try {
      value = std::stoull(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != text.size() || text[0] == '-' || value > maximum) {
      throw UsageError("--" + name + " " + text + ": expected a whole number 0.." +
                       std::to_string(maximum));
    }
    return value;
  }

  // Strict: an option nobody asked for is an error that names it.
  void CheckAllUsed() const {
    if (!values_.empty()) throw UsageError("unknown option --" + values_.begin()->first);
  }

 private:
  std::multimap<std::string, std::string> values_;
};

strata::ClientOptions ClientOptionsFrom(Arguments& arguments) {
  strata::ClientOptions options;
  options.service_url = arguments.Take("service-url", options.service_url);
  options.token = arguments.Take("token", "");
  return options;
}

strata::v1::CompressionType ParseCompression(const std::string& text) {
  if (text == "none") return strata::v1::COMPRESSION_TYPE_NONE;
  if (text == "lz4") return strata::v1::COMPRESSION_TYPE_LZ4;
  if (text == "zstd") return strata::v1::COMPRESSION_TYPE_ZSTD;
  throw UsageError("--compression " + text + ": expected none, lz4 or zstd");
}

strata::v1::SubscriptionType ParseType(const std::string& text) {
  if (text == "exclusive") return strata::v1::SUBSCRIPTION_TYPE_EXCLUSIVE;
  if (text == "shared") return strata::v1::SUBSCRIPTION_TYPE_SHARED;
  if (text == "failover") return strata::v1::SUBSCRIPTION_TYPE_FAILOVER;
  if (text == "key_shared") return strata::v1::SUBSCRIPTION_TYPE_KEY_SHARED;
  throw UsageError("--type " + text + ": expected exclusive, shared, failover or key_shared");
}

int Produce(Arguments& arguments) {
  strata::Client client(ClientOptionsFrom(arguments));
  strata::ProducerOptions options;
  options.topic = arguments.Take("topic", "", true);
  options.producer_name = arguments.Take("producer-name", "");
  options.compression = ParseCompression(arguments.Take("compression", "none"));
  options.batch_max_messages = arguments.TakeCount("batch-size", 100, 100'000);
  if (options.batch_max_messages == 0) throw UsageError("--batch-size must be at least 1");
  const uint64_t messages = arguments.TakeCount("messages", 10, kMaxMessages);
  const std::string prefix = arguments.Take("payload-prefix", "message");
  const uint64_t keys = arguments.TakeCount("keys", 0, kMaxMessages);
  std::map<std::string, std::string> properties;
  for (const std::string& pair : arguments.TakeAll("property")) {
    size_t equals = pair.find('=');
    if (equals == std::string::npos || equals == 0) {
      throw UsageError("--property " + pair + ": expected NAME=VALUE");
    }
    properties[pair.substr(0, equals)] = pair.substr(equals + 1);
  }
  arguments.CheckAllUsed();

  auto started = std::chrono::steady_clock::now();
  auto producer = client.CreateProducer(options);
  std::vector<std::string> lines(messages);
  for (uint64_t i = 0; i < messages; ++i) {
    strata::OutgoingMessage message;
    message.payload = prefix + "-" + std::to_string(i);
    if (keys > 0) message.partition_key = "key-" + std::to_string(i % keys);
    message.properties = properties;
    message.properties["index"] = std::to_string(i);
    producer->Send(std::move(message), [&lines, i](uint64_t sequence_id, const strata::MessageId& id) {
      lines[i] = "{\"index\":" + std::to_string(i) + ",\"sequence_id\":" +
                 std::to_string(sequence_id) + ",\"message_id\":" + JsonId(id) + "}";
    });
  }
  producer->Close();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  for (const std::string& line : lines) std::cout << line << "\n";
  std::cout.flush();
  std::cerr << "produced " << messages << " messages to " << producer->topic() << " as "
            << producer->producer_name() << " in " << seconds << " s\n";
  return 0;
}

int Consume(Arguments& arguments) {
  strata::Client client(ClientOptionsFrom(arguments));
  strata::ConsumerOptions options;
  options.topic = arguments.Take("topic", "", true);
  options.subscription = arguments.Take("subscription", "", true);
  options.type = ParseType(arguments.Take("type", "exclusive"));
  std::string position = arguments.Take("initial-position", "earliest");
  if (position != "earliest" && position != "latest") {
    throw UsageError("--initial-position " + position + ": expected earliest or latest");
  }
  options.initial_position = position == "earliest" ? strata::v1::INITIAL_POSITION_EARLIEST
                                                    : strata::v1::INITIAL_POSITION_LATEST;
  const uint64_t messages = arguments.TakeCount("messages", 10, kMaxMessages);
  const auto timeout = std::chrono::seconds(arguments.TakeCount("timeout-s", 30, 3600));
  std::string ack_also = arguments.Take("ack-also", "");
  std::optional<strata::MessageId> extra;
  if (!ack_also.empty()) {
    size_t colon = ack_also.find(':');
    if (colon == std::string::npos) throw UsageError("--ack-also " + ack_also + ": expected LEDGER:ENTRY");
    extra = strata::MessageId{std::stoull(ack_also.substr(0, colon)),
                              std::stoull(ack_also.substr(colon + 1)), -1, 1, -1};
  }
  arguments.CheckAllUsed();

  auto consumer = client.Subscribe(options);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  uint64_t received = 0;
  while (received < messages && std::chrono::steady_clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    std::optional<strata::ReceivedMessage> message = consumer->Receive(left);
    if (!message) break;
    ++received;
    std::ostringstream line;
    line << "{\"message_id\":" << JsonId(message->id) << ",\"payload\":" << JsonString(message->payload)
         << ",\"partition_key\":"
         << (message->partition_key ? JsonString(*message->partition_key) : "null")
         << ",\"properties\":{";
    bool first = true;
    for (const auto& [name, value] : message->properties) {
      line << (first ? "" : ",") << JsonString(name) << ":" << JsonString(value);
      first = false;
    }
    line << "},\"producer_name\":" << JsonString(message->producer_name)
         << ",\"sequence_id\":" << message->sequence_id
         << ",\"publish_time_ms\":" << message->publish_time_ms
         << ",\"redelivery_count\":" << message->redelivery_count << "}";
    std::cout << line.str() << "\n";
    consumer->Acknowledge(message->id);
  }
  std::cout.flush();
  if (extra) consumer->Acknowledge(*extra);
  std::string refused = consumer->FlushAcknowledgements(std::chrono::seconds(30));
  consumer->Close();
  std::cerr << "consumed " << received << " messages as " << consumer->consumer_name()
            << "; ack receipt: " << (refused.empty() ? "ok" : refused) << "\n";
  return received < messages ? 3 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw UsageError("expected a command: produce or consume");
    std::string command = argv[1];
    Arguments arguments(argc, argv, 2);
    if (command == "produce") return Produce(arguments);
    if (command == "consume") return Consume(arguments);
    throw UsageError("unknown command " + command + ": expected produce or consume");
  } catch (const UsageError& error) {
    std::cerr << "usage: " << error.what() << "\n";
    return 2;
  } catch (const strata::StrataError& error) {
    std::cerr << "error: status " << static_cast<int>(error.code()) << " " << error.what();
    if (!error.reason().empty()) std::cerr << " [" << error.reason() << "]";
    std::cerr << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
}
