'use strict';
// Interoperability both ways with the Python SDK (interop.py), on one standalone: the same
// payloads, keys, properties and message ids on either side, compressed batches included.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { Client } = require('../lib');
const { Standalone, runPython } = require('./servers');

const INTEROP = path.join(__dirname, 'interop.py');
const COUNT = 60;
let standalone;

before(async () => {
  standalone = await new Standalone().start();
});

after(async () => {
  if (standalone) await standalone.stop();
});

const idList = (id) => [Number(id.ledgerId), Number(id.entryId), id.batchIndex, id.partition];

for (const compressionType of ['LZ4', 'ZSTD']) {
  test(`Node produces (${compressionType}), Python consumes`, async () => {
    const topic = `node-to-python-${compressionType.toLowerCase()}`;
    const client = new Client({ serviceUrl: standalone.address });
    let ids;
    try {
      const producer = await client.createProducer({ topic, compressionType, batchingMaxMessages: 25 });
      ids = await Promise.all(Array.from({ length: COUNT }, (_, i) => producer.send(Buffer.from(`node-${i}`),
        { partitionKey: `k${i % 5}`, properties: { i: String(i), src: 'node' } })));
      await producer.close();
    } finally {
      await client.close();
    }
    const out = await runPython([INTEROP, 'consume', standalone.address, topic, 'py', String(COUNT)]);
    const received = out.trim().split('\n').map((line) => JSON.parse(line));
    assert.equal(received.length, COUNT);
    received.forEach((message, i) => {
      assert.deepEqual(message, {
        data: `node-${i}`, key: `k${i % 5}`, properties: { i: String(i), src: 'node' }, id: idList(ids[i]),
      });
    });
  });

  test(`Python produces (${compressionType}), Node consumes`, async () => {
    const topic = `python-to-node-${compressionType.toLowerCase()}`;
    const out = await runPython([INTEROP, 'produce', standalone.address, topic, String(COUNT), compressionType]);
    const receipts = out.trim().split('\n').map((line) => JSON.parse(line));
    assert.equal(receipts.length, COUNT);
    const client = new Client({ serviceUrl: standalone.address });
    try {
      const consumer = await client.subscribe({
        topic, subscription: 'node', subscriptionType: 'Shared', subscriptionInitialPosition: 'Earliest',
      });
      for (let i = 0; i < COUNT; i += 1) {
        const message = await consumer.receive(10_000);
        assert.equal(message.data.toString(), `py-${i}`);
        assert.equal(message.partitionKey, `k${i % 5}`);
        assert.deepEqual(message.properties, { i: String(i), src: 'python' });
        assert.deepEqual(idList(message.messageId), receipts[i].id);
        consumer.acknowledge(message);
      }
      await consumer.flushAcknowledgements();
    } finally {
      await client.close();
    }
  });
}
