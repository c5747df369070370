'use strict';
// Errors of the client, and the one table from gRPC status to error (as strata/client/_errors.py).
const { status: Status } = require('@grpc/grpc-js');

const TOPIC_NOT_OWNED_REASON = 'TOPIC_NOT_OWNED';
const ERROR_DOMAIN = 'strata.io';
const OWNER_METADATA_KEY = 'owner';
const STATUS_DETAILS_KEY = 'grpc-status-details-bin';

/** Base of every client error: `code` is the gRPC status (undefined when raised locally). */
class StrataError extends Error {
  constructor(message, { code, retriable = false, owner = null } = {}) {
    super(message);
    this.name = 'StrataError';
    this.code = code;
    this.retriable = retriable;
    this.owner = owner; // TOPIC_NOT_OWNED only: host:port of the owner, when known
    this.reason = null; // the ErrorInfo reason, when the status carried one
  }
}

// Statuses after which the same call may succeed later (the Python SDK's `retriable`).
// RESOURCE_EXHAUSTED is a server limit (too many producers, a message too big): not retried.
const RETRIABLE = new Set([
  Status.UNAVAILABLE,
  Status.DEADLINE_EXCEEDED,
  Status.CANCELLED,
  Status.ABORTED,
]);

const STATUS_NAMES = Object.fromEntries(Object.entries(Status).map(([name, code]) => [code, name]));

/** The ErrorInfo in a failed call's `grpc-status-details-bin` trailer, or null. */
function errorInfoOf(error, protos) {
  const values = error && error.metadata ? error.metadata.get(STATUS_DETAILS_KEY) : [];
  for (const value of values) {
    if (!Buffer.isBuffer(value)) continue;
    try {
      const status = protos.Status.decode(value);
      for (const detail of status.details) {
        if (detail.type_url.endsWith('/google.rpc.ErrorInfo')) {
          return protos.ErrorInfo.toObject(protos.ErrorInfo.decode(detail.value), { defaults: true });
        }
      }
    } catch {
      return null; // a peer's garbage is not our crash
    }
  }
  return null;
}

/** The client error for a failed grpc-js call; `opened`: the broker had accepted the stream. */
function fromGrpcError(error, protos, { opened = false } = {}) {
  if (error instanceof StrataError) return error;
  const code = typeof error.code === 'number' ? error.code : Status.UNKNOWN;
  const details = error.details || error.message || '';
  const text = `${STATUS_NAMES[code] || code}: ${details}`;
  const info = errorInfoOf(error, protos);
  if (code === Status.FAILED_PRECONDITION && info && info.reason === TOPIC_NOT_OWNED_REASON
      && info.domain === ERROR_DOMAIN) {
    const result = new StrataError(text, { code, retriable: true, owner: info.metadata[OWNER_METADATA_KEY] || null });
    result.reason = info.reason;
    return result;
  }
  // INTERNAL or UNKNOWN on a stream the broker had accepted is how gRPC reports a broker
  // going away mid-stream (RST_STREAM, GOAWAY): a broken connection, retried.
  const broken = opened && (code === Status.INTERNAL || code === Status.UNKNOWN);
  const result = new StrataError(text, { code, retriable: RETRIABLE.has(code) || broken });
  if (info) result.reason = info.reason;
  return result;
}

class TimeoutError extends StrataError {
  constructor(message) {
    super(message, { code: Status.DEADLINE_EXCEEDED, retriable: true });
    this.name = 'TimeoutError';
  }
}

class AlreadyClosedError extends StrataError {
  constructor(message) {
    super(message);
    this.name = 'AlreadyClosedError';
  }
}

module.exports = { StrataError, TimeoutError, AlreadyClosedError, fromGrpcError, errorInfoOf, Status };
