// What a client's request may carry to an upstream, and what answers may
// carry back (docs/SECURITY.md), against tollgate-agent with mockllm
// recording every header it received. Raw sockets, because the point is
// headers an HTTP client library would not send: the client's own
// credentials (Authorization, x-api-key, Proxy-Authorization, Cookie),
// hop-by-hop headers (Connection and what it names, Keep-Alive, TE,
// Upgrade, Proxy-Connection) never reach the upstream, and CR/LF can
// neither inject a header line upstream (bare LF, obs-fold, a model name)
// nor be taken as one. Error answers carry no credential: a wrong key
// shows no more than its first characters, an upstream that refuses the
// channel credential does not get it echoed to the client. An operator
// cannot configure --forward-header for a credential or hop-by-hop header.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';
import { bin, start } from './lib/proc.mjs';

const KEY = 'sk-tg-security-client-key';
const UPSTREAM = 'sk-upstream-security-channel';
const UPSTREAM_WRONG = 'sk-upstream-security-refused';
const COOKIE = 'session=client-cookie-value';

let mock;
let strict; // an upstream that accepts only its own key: the channel's is refused
let agent;

function snapshot() {
  const chan = (id, url, credential) => ({
    id, name: id, provider: 'PROVIDER_TYPE_OPENAI', base_url: `${url}/v1`, credential,
    route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE', first_byte_timeout_ms: 5000,
  });
  return {
    revision: '1',
    accounts: [{ id: 'acct', name: 'acct', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
    balances: [{ account_id: 'acct', bucket: 'credit', currency: 'USD', balance_nano: '100000000000' }],
    keys: [{ id: 'k-sec', account_id: 'acct', secret_sha256: keyHash(KEY), display_prefix: KEY.slice(0, 9),
      status: 'KEY_STATUS_ACTIVE' }],
    channels: [chan('ch-ok', mock.url, UPSTREAM), chan('ch-refused', strict.url, UPSTREAM_WRONG)],
    routes: [
      { model: 'gpt-4o', tiers: [{ targets: [{ channel_id: 'ch-ok', upstream_model: 'up-model' }] }] },
      { model: 'refused-model', tiers: [{ targets: [{ channel_id: 'ch-refused', upstream_model: 'up-model' }] }] },
    ],
    price_cards: [{ id: 'card', version: '1', effective_at_us: '0', currency: 'USD',
      entries: [{ model: '*', input_per_mtok_nano: '1000000000', output_per_mtok_nano: '1000000000' }] }],
  };
}

before(async () => {
  mock = await startMock();
  strict = await startMock(['--api-key', 'sk-upstream-security-expected']);
  agent = await startAgent(snapshot(), { args: ['--forward-header', 'x-trace-id'] });
});
after(async () => {
  await agent?.stop();
  await mock?.stop();
  await strict?.stop();
});

// Sends raw bytes, reads until the agent closes; resolves { status, head, body, raw }.
function raw(bytes, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const s = net.connect(agent.port, '127.0.0.1');
    const chunks = [];
    const t = setTimeout(() => { s.destroy(); reject(new Error('no answer in time')); }, timeoutMs);
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => { /* a reset after the answer: what was read counts */ });
    s.on('close', () => {
      clearTimeout(t);
      const text = Buffer.concat(chunks).toString('latin1');
      const cut = text.indexOf('\r\n\r\n');
      const m = text.match(/^HTTP\/1\.1 (\d{3})/);
      resolve({ status: m ? Number(m[1]) : 0, head: text.slice(0, cut), body: text.slice(cut + 4), raw: text });
    });
    s.write(bytes);
  });
}

function post(headerLines, body) {
  const b = Buffer.from(JSON.stringify(body));
  return raw(`POST /v1/chat/completions HTTP/1.1\r\nHost: gateway.example\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${b.length}\r\nConnection: close\r\n${headerLines.map((l) => `${l}\r\n`).join('')}\r\n` + b);
}

const ask = (model = 'gpt-4o') => ({ model, messages: [{ role: 'user', content: 'hi' }] });

async function upstreamSaw() {
  const r = await mock.requests();
  return r.requests[r.requests.length - 1];
}

test('the client credentials, cookies and hop-by-hop headers never reach the upstream', async () => {
  await mock.reset();
  const r = await post([
    `Authorization: Bearer ${KEY}`, `x-api-key: ${KEY}`, 'Proxy-Authorization: Basic cHJveHk6c2VjcmV0',
    `Cookie: ${COOKIE}`, 'Connection: X-Hop-Secret', 'X-Hop-Secret: hop', 'Keep-Alive: timeout=5',
    'TE: trailers', 'Upgrade: h2c', 'Proxy-Connection: keep-alive', 'X-Trace-Id: trace-1', 'X-Other: not-forwarded',
  ], ask());
  assert.equal(r.status, 200, r.raw);
  const up = await upstreamSaw();
  assert.equal(up.headers.authorization, `Bearer ${UPSTREAM}`, 'the channel credential, not the client key');
  for (const h of ['x-api-key', 'proxy-authorization', 'cookie', 'x-hop-secret', 'keep-alive', 'te', 'upgrade',
    'proxy-connection', 'x-other']) assert.equal(up.headers[h], undefined, `${h} reached the upstream`);
  assert.notEqual(up.headers.host, 'gateway.example', 'the upstream gets its own Host');
  assert.equal(up.headers['x-trace-id'], 'trace-1', '--forward-header names what may pass');
  const all = JSON.stringify(up);
  for (const s of [KEY, 'client-cookie-value', 'cHJveHk6c2VjcmV0']) assert.ok(!all.includes(s), `${s} upstream`);
  // the answer does not echo a credential either
  for (const s of [KEY, UPSTREAM]) assert.ok(!r.raw.includes(s), `${s} in the answer`);
});

test('a client sending only x-api-key: the upstream still sees only the channel credential', async () => {
  await mock.reset();
  const r = await post([`x-api-key: ${KEY}`], ask());
  assert.equal(r.status, 200, r.raw);
  const up = await upstreamSaw();
  assert.equal(up.headers.authorization, `Bearer ${UPSTREAM}`);
  assert.equal(up.headers['x-api-key'], undefined);
});

test('CR and LF cannot inject a header line upstream', async () => {
  await mock.reset();
  // a bare LF inside the head: refused by the front
  const bare = await post([`Authorization: Bearer ${KEY}`, 'X-Trace-Id: a\nInjected-Bare: 1'], ask());
  assert.equal(bare.status, 400, bare.raw);
  // obs-fold (a continuation line) in a forwarded header: one value, or refused
  const fold = await post([`Authorization: Bearer ${KEY}`, 'X-Trace-Id: a', ' Injected-Fold: 1'], ask());
  assert.ok(fold.status === 200 || fold.status === 400, fold.raw);
  // CR LF inside the JSON model name: JSON-escaped, never a header
  const model = await post([`Authorization: Bearer ${KEY}`], ask('gpt-4o\r\nInjected-Model: 1'));
  assert.equal(model.status, 404, model.raw);
  const { requests } = await mock.requests();
  for (const q of requests) {
    for (const name of Object.keys(q.headers)) assert.ok(!name.startsWith('injected'), `${name} injected upstream`);
    for (const v of Object.values(q.headers)) assert.ok(!/[\r\n]/.test(String(v)), `CR/LF in ${v}`);
  }
});

test('errors carry no credential: a wrong key, an upstream refusing the channel credential', async () => {
  const wrong = 'sk-tg-security-wrong-key-0123';
  const r = await post([`Authorization: Bearer ${wrong}`], ask());
  assert.equal(r.status, 401, r.raw);
  assert.ok(!r.raw.includes(wrong.slice(0, 7)), 'at most the first 6 characters of a wrong key are shown');

  const refused = await post([`Authorization: Bearer ${KEY}`], ask('refused-model'));
  assert.ok(refused.status >= 400, refused.raw);
  for (const s of [UPSTREAM_WRONG, KEY]) assert.ok(!refused.raw.includes(s), `${s} in the error answer`);
  // the strict upstream did get the channel credential (and refused it)
  const { requests } = await strict.requests();
  assert.equal(requests[requests.length - 1].headers.authorization, `Bearer ${UPSTREAM_WRONG}`);
});

test('--forward-header refuses credential and hop-by-hop names', async () => {
  for (const name of ['Authorization', 'x-api-key', 'Cookie', 'Connection', 'Transfer-Encoding']) {
    const p = start(bin('agent/tollgate-agent'), ['--port', '0', '--forward-header', name]);
    const { code } = await p.exited;
    assert.equal(code, 2, p.output());
    assert.match(p.output(), /never forwards this header/);
  }
});
