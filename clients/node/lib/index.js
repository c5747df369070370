'use strict';
// A small Node.js client for Strata, from proto/strata/v1/messaging.proto alone (plus the
// PROTOCOL-NOTES.md beside it). API shaped after Pulsar's Node client:
//
//   const client = new Client({ serviceUrl: '127.0.0.1:6650' });
//   const producer = await client.createProducer({ topic: 't', compressionType: 'LZ4' });
//   const id = await producer.send(Buffer.from('hi'), { partitionKey: 'k', properties: { a: '1' } });
//   const consumer = await client.subscribe({ topic: 't', subscription: 's', subscriptionType: 'Shared' });
//   const message = await consumer.receive(5000); consumer.acknowledge(message);
//   await client.close();
const { loadProtos } = require('./proto');
const { ConnectionPool } = require('./connection');
const { Producer } = require('./producer');
const { Consumer } = require('./consumer');
const { initCodecs, MessageId, Message } = require('./batch');
const errors = require('./errors');

class Client {
  /**
   * options: serviceUrl (host:port[,host:port...]), operationTimeoutMs (creating producers
   * and consumers, lookups; default 30 s), protoDir (default: the repository's proto/),
   * useLookup (default true; false: open streams on the first broker of the service URL and
   * follow its TOPIC_NOT_OWNED refusals to the owner, without Lookup calls).
   */
  constructor(options = {}) {
    this._protos = loadProtos(options.protoDir);
    this._operationTimeoutMs = options.operationTimeoutMs ?? 30_000;
    this._pool = new ConnectionPool(options.serviceUrl || 'localhost:6650', this._protos,
      this._operationTimeoutMs, options.useLookup !== false);
    this._handles = new Set();
  }

  /** A producer on `options.topic`, once the broker that owns the topic has opened it. */
  async createProducer(options) {
    await initCodecs();
    const producer = new Producer(this, options.topic, options);
    this._handles.add(producer);
    return producer._start(this._operationTimeoutMs);
  }

  /** A consumer of `options.subscription` on `options.topic`, once subscribed. */
  async subscribe(options) {
    await initCodecs();
    const consumer = new Consumer(this, options.topic, options);
    this._handles.add(consumer);
    return consumer._start(this._operationTimeoutMs);
  }

  /** Which broker serves `topic` (host:port), following redirects. */
  lookup(topic) {
    return this._pool.lookup(topic);
  }

  _forget(handle) {
    this._handles.delete(handle);
  }

  /** Close every producer and consumer, then the channels. */
  async close() {
    await Promise.allSettled([...this._handles].map((handle) => handle.close()));
    this._pool.close();
  }
}

module.exports = { Client, MessageId, Message, ...errors };
