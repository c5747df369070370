'use strict';
// Against one real `strata standalone`: round trips with keys, properties and compression;
// Shared with two consumers and acks, batch-index acks across consumers; reconnect after the
// standalone is killed with SIGKILL and restarted on the same port and data.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client, TimeoutError } = require('../lib');
const { Standalone } = require('./servers');

const RECEIVE_TIMEOUT_MS = 10_000;
let standalone;

before(async () => {
  standalone = await new Standalone().start();
});

after(async () => {
  if (standalone) await standalone.stop();
});

function newClient() {
  return new Client({ serviceUrl: standalone.address, operationTimeoutMs: 20_000 });
}

async function receiveAll(consumer, count, { ack = true } = {}) {
  const messages = [];
  for (let i = 0; i < count; i += 1) {
    const message = await consumer.receive(RECEIVE_TIMEOUT_MS);
    if (ack) consumer.acknowledge(message);
    messages.push(message);
  }
  return messages;
}

async function assertNoMessage(consumer, waitMs = 1_000) {
  await assert.rejects(consumer.receive(waitMs), TimeoutError);
}

test('produce and consume round trip with keys, properties and each compression', async () => {
  const client = newClient();
  try {
    for (const compressionType of ['NONE', 'LZ4', 'ZSTD']) {
      const topic = `roundtrip-${compressionType.toLowerCase()}`;
      const consumer = await client.subscribe({ topic, subscription: 'rt', subscriptionInitialPosition: 'Earliest' });
      const producer = await client.createProducer({ topic, compressionType, batchingMaxMessages: 40 });
      const sends = [];
      for (let i = 0; i < 100; i += 1) {
        sends.push(producer.send(Buffer.from(`m-${i}`), {
          partitionKey: `k${i % 7}`, properties: { i: String(i), kind: 'round-trip' }, eventTimestamp: 1_000 + i,
        }));
      }
      const ids = await Promise.all(sends);
      // Batched: several messages share an entry, indexes 0..n-1 within it.
      assert.ok(ids.some((id) => id.batchIndex > 0), 'messages were batched');
      const messages = await receiveAll(consumer, 100);
      messages.forEach((message, i) => {
        assert.equal(message.data.toString(), `m-${i}`);
        assert.equal(message.partitionKey, `k${i % 7}`);
        assert.deepEqual(message.properties, { i: String(i), kind: 'round-trip' });
        assert.equal(message.eventTimestamp, 1_000 + i);
        assert.ok(message.messageId.equals(ids[i]), `${message.messageId} = ${ids[i]}`);
      });
      await consumer.flushAcknowledgements();
      await producer.close();
      await consumer.close();
    }
  } finally {
    await client.close();
  }
});

test('a message sent alone has batch index -1 on both sides', async () => {
  const client = newClient();
  try {
    const consumer = await client.subscribe({ topic: 'single', subscription: 's', subscriptionInitialPosition: 'Earliest' });
    const producer = await client.createProducer({ topic: 'single', batchingEnabled: false });
    const id = await producer.send(Buffer.from('alone'));
    assert.equal(id.batchIndex, -1);
    const message = await consumer.receive(RECEIVE_TIMEOUT_MS);
    assert.ok(message.messageId.equals(id));
    assert.equal(message.partitionKey, '');
    assert.deepEqual(message.properties, {});
  } finally {
    await client.close();
  }
});

test('Shared subscription: two consumers, each message once, acknowledged', async () => {
  const client = newClient();
  try {
    const topic = 'shared-two';
    const options = { topic, subscription: 'work', subscriptionType: 'Shared', receiverQueueSize: 10 };
    const first = await client.subscribe(options);
    const second = await client.subscribe(options);
    const producer = await client.createProducer({ topic, batchingMaxMessages: 5 });
    await Promise.all(Array.from({ length: 200 }, (_, i) => producer.send(Buffer.from(`w-${i}`))));
    const seen = new Map();
    const counts = [0, 0];
    const drain = async (consumer, index) => {
      for (;;) {
        let message;
        try {
          message = await consumer.receive(1_500);
        } catch (error) {
          if (error instanceof TimeoutError) return;
          throw error;
        }
        const data = message.data.toString();
        seen.set(data, (seen.get(data) || 0) + 1);
        counts[index] += 1;
        consumer.acknowledge(message);
      }
    };
    await Promise.all([drain(first, 0), drain(second, 1)]);
    assert.equal(seen.size, 200);
    assert.ok([...seen.values()].every((n) => n === 1), 'each message delivered once');
    assert.ok(counts[0] > 0 && counts[1] > 0, `both consumers got messages: ${counts}`);
    await first.flushAcknowledgements();
    await second.flushAcknowledgements();
    await first.close();
    await second.close();
    // Everything was acknowledged durably: a new consumer of the subscription gets nothing.
    const third = await client.subscribe(options);
    await assertNoMessage(third);
  } finally {
    await client.close();
  }
});

test('batch-index acks: a redelivered entry skips the indexes already acknowledged', async () => {
  const client = newClient();
  try {
    const topic = 'batch-index-acks';
    const options = { topic, subscription: 'half', subscriptionType: 'Shared' };
    const first = await client.subscribe(options);
    const producer = await client.createProducer({ topic, batchingMaxMessages: 10 });
    const ids = await Promise.all(Array.from({ length: 10 }, (_, i) => producer.send(Buffer.from(`b-${i}`))));
    assert.ok(ids.every((id) => id.entryId === ids[0].entryId && id.batchSize === 10), 'one entry of 10');
    const messages = await receiveAll(first, 10, { ack: false });
    for (const message of messages.filter((_, i) => i % 2 === 0)) first.acknowledge(message);
    await first.flushAcknowledgements();
    await first.close(); // the unacknowledged half goes to the next consumer
    const second = await client.subscribe(options);
    const redelivered = await receiveAll(second, 5);
    assert.deepEqual(redelivered.map((m) => m.data.toString()), ['b-1', 'b-3', 'b-5', 'b-7', 'b-9']);
    assert.deepEqual(redelivered.map((m) => m.messageId.batchIndex), [1, 3, 5, 7, 9]);
    assert.ok(redelivered.every((m) => m.redeliveryCount >= 1));
    await assertNoMessage(second);
    await second.flushAcknowledgements();
  } finally {
    await client.close();
  }
});

test('reconnect: the standalone killed with SIGKILL and restarted, producer and consumer go on', async () => {
  const client = newClient();
  try {
    const topic = 'reconnect';
    const consumer = await client.subscribe({ topic, subscription: 'r', subscriptionType: 'Shared' });
    const producer = await client.createProducer({ topic, sendTimeoutMs: 60_000 });
    await Promise.all(Array.from({ length: 50 }, (_, i) => producer.send(Buffer.from(`r-${i}`))));
    const received = new Set();
    for (const message of await receiveAll(consumer, 50)) received.add(message.data.toString());
    await consumer.flushAcknowledgements();
    await standalone.restart(); // SIGKILL by PID, then the same port and data directory
    const ids = await Promise.all(Array.from({ length: 50 }, (_, i) => producer.send(Buffer.from(`r-${50 + i}`))));
    assert.equal(ids.length, 50);
    const deadline = Date.now() + 30_000;
    while (received.size < 100 && Date.now() < deadline) {
      const message = await consumer.receive(RECEIVE_TIMEOUT_MS);
      received.add(message.data.toString());
      consumer.acknowledge(message);
    }
    assert.equal(received.size, 100);
    // Both streams really broke and were reopened (not served by a surviving connection).
    assert.equal(producer._reconnector.lastError.retriable, true);
    assert.equal(consumer._reconnector.lastError.retriable, true);
    await consumer.flushAcknowledgements();
  } finally {
    await client.close();
  }
});
