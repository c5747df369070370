#!/usr/bin/env node
'use strict';
// Produce messages and print their receipts (message ids).
//   node examples/produce.js --service-url 127.0.0.1:6650 --topic my-topic \
//     [--messages 10] [--key k] [--property a=1 ...] [--compression NONE|LZ4|ZSTD] [TEXT]
const { parseArgs } = require('node:util');
const { Client } = require('../lib');

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'service-url': { type: 'string', default: 'localhost:6650' },
      topic: { type: 'string' },
      messages: { type: 'string', default: '1' },
      key: { type: 'string' },
      property: { type: 'string', multiple: true, default: [] },
      compression: { type: 'string', default: 'NONE' },
    },
  });
  if (!values.topic) throw new Error('--topic is required');
  const properties = Object.fromEntries(values.property.map((p) => {
    const at = p.indexOf('=');
    if (at < 1) throw new Error(`--property ${p}: use name=value`);
    return [p.slice(0, at), p.slice(at + 1)];
  }));
  const text = positionals.join(' ') || 'hello';
  const client = new Client({ serviceUrl: values['service-url'] });
  try {
    const producer = await client.createProducer({ topic: values.topic, compressionType: values.compression });
    const count = Number(values.messages);
    const ids = await Promise.all(Array.from({ length: count }, (_, i) => producer.send(
      Buffer.from(count === 1 ? text : `${text}-${i}`),
      { partitionKey: values.key, properties },
    )));
    ids.forEach((id, i) => console.log(`sent ${i} id=${id}`));
    await producer.close();
  } finally {
    await client.close();
  }
}

main().catch((error) => {
  console.error(`error: ${error.message}`);
  process.exitCode = 1;
});
