#!/usr/bin/env node
'use strict';
// Producer throughput with batching:
//   node examples/perf.js --messages 200000 --size 100 [--service-url host:port]
//     [--topic perf] [--compression NONE|LZ4|ZSTD] [--batch-max-messages 1000]
//     [--max-pending 10000]
// Without --service-url it starts a temporary `strata standalone` from the repository's venv.
const { parseArgs } = require('node:util');
const { Client } = require('../lib');

async function main() {
  const { values } = parseArgs({
    options: {
      'service-url': { type: 'string' },
      topic: { type: 'string', default: `perf-${Date.now()}` },
      messages: { type: 'string', default: '100000' },
      size: { type: 'string', default: '100' },
      compression: { type: 'string', default: 'NONE' },
      'batch-max-messages': { type: 'string', default: '1000' },
      'max-pending': { type: 'string', default: '10000' },
    },
  });
  let standalone = null;
  let serviceUrl = values['service-url'];
  if (!serviceUrl) {
    const { Standalone } = require('../test/servers');
    standalone = await new Standalone().start();
    serviceUrl = standalone.address;
  }
  const client = new Client({ serviceUrl });
  try {
    const producer = await client.createProducer({
      topic: values.topic,
      compressionType: values.compression,
      batchingMaxMessages: Number(values['batch-max-messages']),
      maxPendingMessages: Number(values['max-pending']),
    });
    const count = Number(values.messages);
    const payload = Buffer.alloc(Number(values.size), 'x');
    const started = process.hrtime.bigint();
    let failed = 0;
    let last = null;
    for (let i = 0; i < count; i += 1) {
      // send() waits only while max-pending messages await receipts.
      last = producer.send(payload).catch(() => { failed += 1; });
      if (i % 1000 === 999) await new Promise(setImmediate);
    }
    await last;
    await producer.flush();
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const rate = count / seconds;
    console.log(`node perf produce: ${count} messages of ${values.size} bytes in ${seconds.toFixed(2)} s: `
      + `${Math.round(rate)} msg/s, ${((rate * Number(values.size)) / 1e6).toFixed(1)} MB/s, ${failed} failed`);
    await producer.close();
  } finally {
    await client.close();
    if (standalone) await standalone.stop();
  }
}

main().catch((error) => {
  console.error(`error: ${error.message}`);
  process.exitCode = 1;
});
