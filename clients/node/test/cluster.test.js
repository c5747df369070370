'use strict';
// Against a real cluster (etcd + 2 bookies + 2 brokers): a client that knows only broker 0
// reaches a topic owned by broker 1, through Lookup redirects and through the TOPIC_NOT_OWNED
// refusal (ErrorInfo with the owner's address).
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client, Status, fromGrpcError } = require('../lib');
const { loadProtos } = require('../lib/proto');
const { Cluster } = require('./servers');

const RECEIVE_TIMEOUT_MS = 10_000;
const TOPICS = 16;
let cluster;
let remoteTopic; // a topic of public/spread owned by broker 1

before(async () => {
  cluster = await new Cluster().start();
  // Lookups from broker 0 assign the 16 bundles' topics over both brokers.
  const client = new Client({ serviceUrl: cluster.brokers[0], operationTimeoutMs: 20_000 });
  try {
    for (let i = 0; i < TOPICS && remoteTopic === undefined; i += 1) {
      const topic = `persistent://public/spread/t${i}`;
      if ((await client.lookup(topic)) === cluster.brokers[1]) remoteTopic = topic;
    }
  } finally {
    await client.close();
  }
  assert.ok(remoteTopic, `one of ${TOPICS} topics is owned by broker 1`);
});

after(async () => {
  if (cluster) await cluster.stop();
});

async function roundTrip(client, subscription) {
  const consumer = await client.subscribe({
    topic: remoteTopic, subscription, subscriptionType: 'Shared', subscriptionInitialPosition: 'Earliest',
  });
  const producer = await client.createProducer({ topic: remoteTopic, compressionType: 'LZ4' });
  const ids = await Promise.all(Array.from({ length: 20 }, (_, i) =>
    producer.send(Buffer.from(`${subscription}-${i}`), { partitionKey: `k${i}`, properties: { i: String(i) } })));
  const got = [];
  while (got.length < 20) {
    const message = await consumer.receive(RECEIVE_TIMEOUT_MS);
    consumer.acknowledge(message);
    if (message.data.toString().startsWith(`${subscription}-`)) got.push(message);
  }
  got.forEach((message, i) => {
    assert.equal(message.data.toString(), `${subscription}-${i}`);
    assert.equal(message.partitionKey, `k${i}`);
    assert.ok(message.messageId.equals(ids[i]));
  });
  await consumer.flushAcknowledgements();
  return { producer, consumer };
}

test('lookup redirects: a client that knows broker 0 produces and consumes on broker 1', async () => {
  const client = new Client({ serviceUrl: cluster.brokers[0] });
  try {
    const { producer, consumer } = await roundTrip(client, 'lookup');
    assert.equal(producer._reconnector.address, cluster.brokers[1]);
    assert.equal(consumer._reconnector.address, cluster.brokers[1]);
  } finally {
    await client.close();
  }
});

test('TOPIC_NOT_OWNED: broker 0 refuses with the owner in an ErrorInfo, the client follows it', async () => {
  // The raw refusal, as any gRPC client sees it.
  const protos = loadProtos();
  const stub = new protos.MessagingService(cluster.brokers[0], require('@grpc/grpc-js').credentials.createInsecure());
  const refusal = await new Promise((resolve) => {
    const call = stub.Produce();
    call.on('data', () => {});
    call.on('error', resolve);
    call.write({ open: { topic: remoteTopic } });
  });
  stub.close();
  const error = fromGrpcError(refusal, protos);
  assert.equal(error.code, Status.FAILED_PRECONDITION);
  assert.equal(error.reason, 'TOPIC_NOT_OWNED');
  assert.equal(error.owner, cluster.brokers[1]);
  assert.equal(error.retriable, true);
  // A client without lookups opens on broker 0, is refused, and goes to the owner.
  const client = new Client({ serviceUrl: cluster.brokers[0], useLookup: false });
  try {
    const { producer, consumer } = await roundTrip(client, 'not-owned');
    assert.equal(producer._reconnector.address, cluster.brokers[1]);
    assert.equal(consumer._reconnector.lastError.owner, cluster.brokers[1]);
  } finally {
    await client.close();
  }
});
