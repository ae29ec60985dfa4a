#!/usr/bin/env node
// One InvokeFunction through Alibaba Cloud's official FC 3.0 SDK (@alicloud/fc20230330),
// so the tests prove the local FC endpoint checks FC 3.0 requests as the SDK signs them.
//
// Usage: node fc3-invoke.js <http://host:port> <function> <Sync|Async> <payload>
//   credentials from ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET / ALIBABA_CLOUD_SECURITY_TOKEN
// Prints one JSON line: {"status", "requestId", "errorType", "body"} or {"error": {"code", "message"}}.
'use strict';

const { Readable } = require('stream');
const { $OpenApiUtil } = require('@alicloud/openapi-core');
const Fc = require('@alicloud/fc20230330');

async function main() {
  const [endpoint, functionName, invocationType, payload] = process.argv.slice(2);
  const url = new URL(endpoint);
  const client = new Fc.default(new $OpenApiUtil.Config({
    accessKeyId: process.env.ALIBABA_CLOUD_ACCESS_KEY_ID,
    accessKeySecret: process.env.ALIBABA_CLOUD_ACCESS_KEY_SECRET,
    securityToken: process.env.ALIBABA_CLOUD_SECURITY_TOKEN || undefined,
    endpoint: url.host,
    protocol: url.protocol.replace(':', ''),
  }));
  const request = new Fc.InvokeFunctionRequest({ body: Readable.from([Buffer.from(payload)]) });
  const headers = new Fc.InvokeFunctionHeaders({ xFcInvocationType: invocationType });
  try {
    const response = await client.invokeFunctionWithOptions(functionName, request, headers, {});
    const chunks = [];
    for await (const chunk of response.body) chunks.push(Buffer.from(chunk));
    console.log(JSON.stringify({
      status: response.statusCode,
      requestId: response.headers['x-fc-request-id'] || '',
      errorType: response.headers['x-fc-error-type'] || '',
      body: Buffer.concat(chunks).toString('utf8'),
    }));
  } catch (err) {
    console.log(JSON.stringify({ error: { code: err.code, message: err.message } }));
  }
}

main();
