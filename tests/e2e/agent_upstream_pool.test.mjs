// Upstream connections: the agent keeps them alive and reuses them (ten
// requests, JSON and streams, over one TCP connection, counted by a relay in
// front of mockllm); an upstream that closes a kept-alive connection just as
// the next request goes out costs the client nothing (the request goes again
// on a new connection, one attempt in the record); an upstream that closes
// idle connections (mockllm --idle-close) is served without an error; a
// chunked stream and a Content-Length answer both arrive whole. tests/run.sh
// runs this file twice: with the default upstream client (lean) and with
// TG_UPSTREAM_CLIENT=curl (agent.mjs passes --upstream-client).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import OpenAI from 'openai';
import { startMock, answerText, DEFAULT_TOKENS } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';

const KEY = 'sk-tg-upstream-pool';
let mock;
let idleMock;
let agent;
const relays = [];

// A TCP relay to `port` that counts connections; with `cutSecond`, a
// connection that already carried one answer is closed, unanswered, when the
// next request's bytes arrive (the server's close racing the client's reuse).
async function relay(port, { cutSecond = false } = {}) {
  const r = { conns: 0, cut: 0, sockets: [] };
  r.server = net.createServer((s) => {
    r.conns++;
    const u = net.connect(port, '127.0.0.1');
    r.sockets.push(s, u);
    let answered = false;
    s.on('data', (d) => {
      if (cutSecond && answered) {
        r.cut++;
        s.destroy();
        u.destroy();
        return;
      }
      u.write(d);
    });
    u.on('data', (d) => { answered = true; s.write(d); });
    s.on('error', () => u.destroy());
    u.on('error', () => s.destroy());
    s.on('close', () => u.destroy());
    u.on('close', () => s.end());
  });
  await new Promise((resolve) => r.server.listen(0, '127.0.0.1', resolve));
  r.port = r.server.address().port;
  relays.push(r);
  return r;
}

function snapshot(ports) {
  const chans = Object.entries(ports).map(([id, port]) => ({
    id, name: id, provider: 'PROVIDER_TYPE_OPENAI', base_url: `http://127.0.0.1:${port}/v1`,
    credential: 'sk-upstream-pool', route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE',
  }));
  return {
    revision: '1',
    accounts: [{ id: 'acct', name: 'acct', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
    balances: [{ account_id: 'acct', bucket: 'credit', currency: 'USD', balance_nano: '100000000000' }],
    keys: [{ id: 'k-pool', account_id: 'acct', secret_sha256: keyHash(KEY), status: 'KEY_STATUS_ACTIVE' }],
    channels: chans,
    routes: Object.keys(ports).map((id) => ({ model: `m-${id}`, tiers: [{ targets: [{ channel_id: id }] }] })),
    price_cards: [{ id: 'card', version: '1', effective_at_us: '1', currency: 'USD',
      entries: Object.keys(ports).map((id) => ({ model: `m-${id}`, input_per_mtok_nano: '150000000',
        output_per_mtok_nano: '600000000' })) }],
    policy: {},
  };
}

let counting;
let cutting;

before(async () => {
  mock = await startMock();
  idleMock = await startMock(['--idle-close', '100']);
  counting = await relay(mock.port);
  cutting = await relay(mock.port, { cutSecond: true });
  agent = await startAgent(snapshot({ keep: counting.port, cut: cutting.port, idle: idleMock.port }));
});

after(async () => {
  await agent?.stop();
  for (const r of relays) {
    for (const s of r.sockets) s.destroy();
    await new Promise((resolve) => r.server.close(resolve));
  }
  await mock?.stop();
  await idleMock?.stop();
});

const client = () => new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0 });

async function chat(model, stream) {
  if (!stream) {
    const { data, response } = await client().chat.completions
      .create({ model, messages: [{ role: 'user', content: 'hello' }] }).withResponse();
    assert.equal(data.choices[0].message.content, answerText(DEFAULT_TOKENS));
    return response.headers.get('x-request-id');
  }
  const s = await client().chat.completions.create({ model, stream: true, messages: [{ role: 'user', content: 'hi' }] });
  let text = '';
  for await (const chunk of s) text += chunk.choices[0]?.delta?.content || '';
  assert.equal(text, answerText(DEFAULT_TOKENS));
  return null;
}

test('ten requests, JSON (Content-Length) and streams (chunked), over one kept-alive upstream connection', async () => {
  for (let i = 0; i < 10; i++) await chat('m-keep', i % 2 === 1);
  assert.equal(counting.conns, 1, 'one upstream connection, reused');
});

test('an upstream that closes a kept-alive connection as it is reused: the request goes again, the client sees 200', async () => {
  for (let i = 0; i < 4; i++) {
    const id = await chat('m-cut', false);
    const rec = await agent.waitRecord(id);
    assert.equal(rec.client_status, 200);
    assert.equal(rec.attempts.length, 1, 'the retry on a new connection is not another attempt');
    assert.equal(rec.attempts[0].http_status, 200);
  }
  assert.ok(cutting.cut >= 3, `the relay cut ${cutting.cut} reused connections`);
  assert.equal(cutting.conns, 4);
});

test('an upstream that closes idle connections (mockllm --idle-close 100): served without an error', async () => {
  for (let i = 0; i < 3; i++) {
    await chat('m-idle', i === 1);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
});
