'use strict';
// Channels (one per broker), topic lookup with redirects, and the reconnect loop.
const grpc = require('@grpc/grpc-js');
const { StrataError, fromGrpcError, Status } = require('./errors');

// A broker may send a delivery of up to its max message size (5 MiB) plus the envelope; gRPC's
// default 4 MiB receive limit is not enough (PROTOCOL-NOTES.md). Same as the Python SDK.
const MAX_GRPC_MESSAGE_BYTES = 8 * 1024 * 1024;
const KEEPALIVE_TIME_MS = 30_000;
const KEEPALIVE_TIMEOUT_MS = 10_000;
// Pulsar's client follows at most 20 redirects.
const MAX_LOOKUP_REDIRECTS = 20;
const LOOKUP_CALL_TIMEOUT_MS = 10_000;
const RECONNECT_INITIAL_BACKOFF_MS = 100;
const RECONNECT_MAX_BACKOFF_MS = 2_000;
const DEFAULT_PORT = 6650;

const CHANNEL_OPTIONS = {
  'grpc.max_receive_message_length': MAX_GRPC_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_GRPC_MESSAGE_BYTES,
  'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
  'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
  // gRPC's reconnect backoff grows to 120 s; a broker back after a restart must be reached sooner.
  'grpc.initial_reconnect_backoff_ms': RECONNECT_INITIAL_BACKOFF_MS,
  'grpc.max_reconnect_backoff_ms': RECONNECT_MAX_BACKOFF_MS,
};

/** The brokers of a service URL (`host:port[,host:port]`, optional grpc:// or pulsar://). */
function parseServiceUrl(serviceUrl) {
  const text = String(serviceUrl).trim().replace(/^(grpc|pulsar):\/\//, '');
  const targets = [];
  for (const part of text.split(',')) {
    const target = part.trim().replace(/^(grpc|pulsar):\/\//, '').replace(/\/+$/, '');
    if (!target || target.includes('/') || target.includes('://')) {
      throw new TypeError(`service URL ${JSON.stringify(serviceUrl)}: use host:port[,host:port...]`);
    }
    const withPort = /:\d+$/.test(target) ? target : `${target}:${DEFAULT_PORT}`;
    if (!targets.includes(withPort)) targets.push(withPort);
  }
  return targets;
}

function backoffDelayMs(attempt) {
  const base = Math.min(RECONNECT_MAX_BACKOFF_MS, RECONNECT_INITIAL_BACKOFF_MS * 2 ** Math.min(attempt, 16));
  return base * (0.8 + 0.4 * Math.random());
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

class ConnectionPool {
  constructor(serviceUrl, protos, operationTimeoutMs, useLookup = true) {
    this.targets = parseServiceUrl(serviceUrl);
    // Without lookups, streams open on the first service broker and follow TOPIC_NOT_OWNED.
    this.useLookup = useLookup;
    this.protos = protos;
    this.operationTimeoutMs = operationTimeoutMs;
    this._stubs = new Map();
    this._serviceIndex = 0; // the service broker to ask first: the last one that answered
    this.closed = false;
  }

  /** The MessagingService stub of the broker at `address` (one channel per broker). */
  stub(address) {
    if (this.closed) throw new StrataError('the client is closed', { code: Status.UNAVAILABLE });
    let stub = this._stubs.get(address);
    if (stub === undefined) {
      stub = new this.protos.MessagingService(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
      this._stubs.set(address, stub);
    }
    return stub;
  }

  /** One unary call on `address`; gRPC errors become StrataErrors. */
  unary(address, method, request, timeoutMs = this.operationTimeoutMs) {
    const stub = this.stub(address);
    return new Promise((resolve, reject) => {
      stub[method](request, { deadline: Date.now() + timeoutMs }, (error, response) => {
        if (error) reject(fromGrpcError(error, this.protos));
        else resolve(response);
      });
    });
  }

  /** `call(address)` on a broker of the service URL, the next one after a connection failure. */
  async callServiceBrokers(call) {
    let lastError = null;
    for (let step = 0; step < this.targets.length; step += 1) {
      const index = (this._serviceIndex + step) % this.targets.length;
      try {
        const result = await call(this.targets[index]);
        this._serviceIndex = index;
        return result;
      } catch (error) {
        const failure = error.code === Status.UNAVAILABLE || error.code === Status.DEADLINE_EXCEEDED;
        if (!failure) throw error;
        lastError = error;
      }
    }
    throw lastError;
  }

  /**
   * The host:port of the broker serving `topic`: Lookup on a service broker, then follow
   * REDIRECT answers (passing `authoritative` on) until CONNECT, at most 20 times.
   */
  lookup(topic) {
    const timeoutMs = Math.min(this.operationTimeoutMs, LOOKUP_CALL_TIMEOUT_MS);
    return this.callServiceBrokers(async (first) => {
      let address = first;
      let authoritative = false;
      for (let hop = 0; hop <= MAX_LOOKUP_REDIRECTS; hop += 1) {
        let response;
        try {
          response = await this.unary(address, 'Lookup', { topic, authoritative }, timeoutMs);
        } catch (error) {
          if (error.code === Status.UNIMPLEMENTED) return address; // a broker from before ownership
          throw error;
        }
        if (response.result === 'CONNECT') return response.broker_address || address;
        if (response.result !== 'REDIRECT' || !response.broker_address) {
          throw new StrataError(`broker ${address} answered a lookup of ${topic} with ${response.result}`);
        }
        address = response.broker_address;
        authoritative = response.authoritative;
      }
      throw new StrataError(`lookup of ${topic} was redirected more than ${MAX_LOOKUP_REDIRECTS} times`,
        { code: Status.UNAVAILABLE, retriable: true });
    });
  }

  close() {
    this.closed = true;
    for (const stub of this._stubs.values()) stub.close();
    this._stubs.clear();
  }
}

/**
 * Keeps one producer's or consumer's stream open on whichever broker serves its topic.
 *
 * `attempt(stub)` opens the stream, calls `opened()` once the broker accepted it, and returns a
 * promise that rejects when the stream ends (it never resolves). Each attempt goes to the owner
 * named by the last TOPIC_NOT_OWNED refusal, else to the broker a lookup finds; between
 * attempts it waits 100 ms doubling to 2 s (±20 %). `run` resolves with the error that ended
 * retrying: a non-retriable one, or any once `shouldStop()` says so.
 */
class Reconnector {
  constructor(pool, topic, { shouldStop }) {
    this.pool = pool;
    this.topic = topic;
    this.shouldStop = shouldStop;
    this.failures = 0;
    this.ownerHint = null;
    this.openedInAttempt = false;
    this.lastError = null;
    this.address = null;
    this.everOpened = false;
  }

  opened() {
    this.failures = 0;
    this.openedInAttempt = true;
    this.everOpened = true;
  }

  async run(attempt) {
    for (;;) {
      this.openedInAttempt = false;
      let error;
      try {
        const address = this.ownerHint
          || (this.pool.useLookup ? await this.pool.lookup(this.topic) : this.pool.targets[0]);
        this.ownerHint = null;
        this.address = address;
        await attempt(this.pool.stub(address));
        error = new StrataError('the stream ended', { code: Status.UNAVAILABLE, retriable: true });
      } catch (caught) {
        error = caught instanceof StrataError
          ? caught : fromGrpcError(caught, this.pool.protos, { opened: this.openedInAttempt });
      }
      // After a reconnect the broker may not yet have noticed that our old stream is gone and
      // refuses the producer name or the exclusive subscription as busy: that clears up. The
      // refusal carries no ErrorInfo; its message is the only sign (PROTOCOL-NOTES.md).
      if (this.everOpened && error.code === Status.FAILED_PRECONDITION
          && /already (connected|has a consumer)/i.test(error.message)) error.retriable = true;
      this.lastError = error;
      this.failures += 1;
      if (error.owner) this.ownerHint = error.owner;
      if (!error.retriable || this.shouldStop(error)) return error;
      await sleep(backoffDelayMs(this.failures - 1));
      if (this.shouldStop(error)) return error;
    }
  }
}

/**
 * Runs one bidirectional call: `onData(response)` per message; resolves never, rejects with the
 * status (or UNAVAILABLE for a clean end) once the call is over.
 */
function serveCall(call, protos, onData, isOpened) {
  return new Promise((_resolve, reject) => {
    let done = false;
    const fail = (error) => {
      if (done) return;
      done = true;
      call.cancel();
      reject(error instanceof StrataError ? error : fromGrpcError(error, protos, { opened: isOpened() }));
    };
    call.on('data', (response) => {
      try {
        onData(response);
      } catch (error) {
        fail(error instanceof StrataError ? error : new StrataError(`protocol error: ${error.message}`, { retriable: true }));
      }
    });
    call.on('error', fail);
    call.on('end', () => fail(new StrataError('the broker ended the stream', { code: Status.UNAVAILABLE, retriable: true })));
  });
}

module.exports = { ConnectionPool, Reconnector, serveCall, parseServiceUrl, sleep, backoffDelayMs, MAX_GRPC_MESSAGE_BYTES };
