'use strict';
// The wire types, loaded at run time from the repository's proto/ (no code generation).
//
// Two loaders, because the .proto has two kinds of messages:
// - @grpc/proto-loader for the gRPC services and their request/response messages;
// - protobufjs directly for MessageBatch and StoredEntry, which travel serialized inside
//   `bytes` fields (ProducerBatch.payload, Delivery.entry) and never appear in a service
//   signature, and for google.rpc.Status / ErrorInfo, which Strata does not ship beside its
//   protos (PROTOCOL-NOTES.md).
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const DEFAULT_PROTO_DIR = path.resolve(__dirname, '..', '..', '..', 'proto');

const LOADER_OPTIONS = {
  keepCase: true, // field names as in the .proto (ledger_id), like every other client
  longs: String, // uint64 ids up to 2^64-1 survive; converted where used
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
};

// google/rpc/status.proto, google/rpc/error_details.proto (ErrorInfo only) and
// google/protobuf/any.proto, as much of them as a client needs to read a status's details.
const GOOGLE_RPC_JSON = {
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
          },
        },
      },
    },
  },
};

const cache = new Map();

/** The loaded services and batch types for the protos under `protoDir` (cached). */
function loadProtos(protoDir = DEFAULT_PROTO_DIR) {
  let loaded = cache.get(protoDir);
  if (loaded !== undefined) return loaded;
  const file = 'strata/v1/messaging.proto';
  const definition = protoLoader.loadSync(file, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
  const services = grpc.loadPackageDefinition(definition).strata.v1;
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(protoDir, target);
  root.loadSync(file, { keepCase: true });
  const rpc = protobuf.Root.fromJSON(GOOGLE_RPC_JSON);
  loaded = {
    MessagingService: services.MessagingService,
    MessageBatch: root.lookupType('strata.v1.MessageBatch'),
    StoredEntry: root.lookupType('strata.v1.StoredEntry'),
    MessageIdData: root.lookupType('strata.v1.MessageIdData'),
    Status: rpc.lookupType('google.rpc.Status'),
    ErrorInfo: rpc.lookupType('google.rpc.ErrorInfo'),
  };
  cache.set(protoDir, loaded);
  return loaded;
}

module.exports = { loadProtos, DEFAULT_PROTO_DIR };
