#!/usr/bin/env node
'use strict';
// Consume and acknowledge messages, printing each one.
//   node examples/consume.js --service-url 127.0.0.1:6650 --topic my-topic --subscription s \
//     [--type Exclusive|Shared|Failover|KeyShared] [--position Latest|Earliest] \
//     [--messages 10] [--timeout-ms 10000]
const { parseArgs } = require('node:util');
const { Client, TimeoutError } = require('../lib');

async function main() {
  const { values } = parseArgs({
    options: {
      'service-url': { type: 'string', default: 'localhost:6650' },
      topic: { type: 'string' },
      subscription: { type: 'string' },
      type: { type: 'string', default: 'Shared' },
      position: { type: 'string', default: 'Earliest' },
      messages: { type: 'string', default: '1' },
      'timeout-ms': { type: 'string', default: '10000' },
    },
  });
  if (!values.topic || !values.subscription) throw new Error('--topic and --subscription are required');
  const client = new Client({ serviceUrl: values['service-url'] });
  try {
    const consumer = await client.subscribe({
      topic: values.topic,
      subscription: values.subscription,
      subscriptionType: values.type,
      subscriptionInitialPosition: values.position,
    });
    for (let i = 0; i < Number(values.messages); i += 1) {
      let message;
      try {
        message = await consumer.receive(Number(values['timeout-ms']));
      } catch (error) {
        if (!(error instanceof TimeoutError)) throw error;
        console.log(`no message within ${values['timeout-ms']} ms`);
        break;
      }
      console.log(`received id=${message.messageId} key=${JSON.stringify(message.partitionKey)} `
        + `properties=${JSON.stringify(message.properties)} data=${JSON.stringify(message.data.toString())}`);
      consumer.acknowledge(message);
    }
    await consumer.close(); // makes the acknowledgements durable first
  } finally {
    await client.close();
  }
}

main().catch((error) => {
  console.error(`error: ${error.message}`);
  process.exitCode = 1;
});
