// tollgate-agent through the official `openai` Node SDK, with mockllm as the
// upstream: answers and usage (JSON and streaming), the model rewrite and
// the channel credential as the upstream saw them, fallback with every
// attempt in the receipt, the circuit breaker opening and recovering, the
// OpenAI error shapes (401/402/403/404/400/413), trusted X-Forwarded-For,
// a client leaving mid-stream, a configuration swap and a restart from the
// persisted snapshot.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import net from 'node:net';
import { startMock, startRefusing, promptTokens, answerText, DEFAULT_TOKENS } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';
import { until } from './lib/proc.mjs';
import { get_encoding } from 'tiktoken';

const KEY = 'sk-tg-test-main';
const KEY_LIMITED = 'sk-tg-test-limited'; // model allowlist + route types
const KEY_IP = 'sk-tg-test-ip';           // IP allowlist 203.0.113.0/24
const KEY_POOR = 'sk-tg-test-poor';       // account with an empty balance
const KEY_PAUSED = 'sk-tg-test-paused';
const UPSTREAM_SECRET = 'sk-upstream-channel-secret';

let mock;
let refusing;
let agent;
let client;

const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say hello to the gateway.' }];

function snapshot(extraRoutes = []) {
  const key = (id, secret, account, more = {}) => ({
    id, account_id: account, secret_sha256: keyHash(secret), display_prefix: secret.slice(0, 9),
    status: 'KEY_STATUS_ACTIVE', expose_cost: true, ...more,
  });
  const chan = (id, more = {}) => ({
    id, name: id, provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`, credential: UPSTREAM_SECRET,
    route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE', first_byte_timeout_ms: 3000, ...more,
  });
  const retry = (more = {}) => ({
    max_attempts: 3, retry_on_connect_error: true, retry_on_timeout: true, retry_on_429: true, retry_on_5xx: true,
    fallback_enabled: true, honor_retry_after: true, backoff_initial_ms: 10, backoff_max_ms: 100, ...more,
  });
  return {
    revision: '7',
    accounts: [
      { id: 'acct-main', name: 'main', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' },
      { id: 'acct-poor', name: 'poor', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' },
    ],
    balances: [
      { account_id: 'acct-main', bucket: 'credit', currency: 'USD', balance_nano: '100000000000' },
      { account_id: 'acct-main', bucket: 'wallet', currency: 'USD', balance_nano: '100000000000' },
      { account_id: 'acct-poor', bucket: 'credit', currency: 'USD', balance_nano: '0' },
    ],
    keys: [
      key('k-main', KEY, 'acct-main'),
      key('k-limited', KEY_LIMITED, 'acct-main', { model_allowlist: ['gpt-4o*'], allowed_route_types: ['ROUTE_TYPE_POOLED'] }),
      key('k-ip', KEY_IP, 'acct-main', { ip_allowlist: ['203.0.113.0/24', '2001:db8::/32'] }),
      key('k-poor', KEY_POOR, 'acct-poor'),
      key('k-paused', KEY_PAUSED, 'acct-main', { status: 'KEY_STATUS_PAUSED', status_reason: 'budget review' }),
    ],
    channels: [
      chan('ch-main'),
      chan('ch-pooled', { route_type: 'ROUTE_TYPE_POOLED' }),
      chan('ch-broken', { extra_headers: [{ name: 'x-mock-scenario', value: 'status=500' }] }),
      chan('ch-refusing', { base_url: `${refusing.url}/v1`, connect_timeout_ms: 1000 }),
      chan('ch-flaky', { extra_headers: [{ name: 'x-mock-scenario', value: 'fail-first=2;status=503;key=flaky' }] }),
      chan('ch-backup', { name: 'backup', route_type: 'ROUTE_TYPE_POOLED' }),
      chan('ch-slow', { extra_headers: [{ name: 'x-mock-scenario', value: 'tokens=200;itl=50' }] }),
      chan('ch-slowhead', { extra_headers: [{ name: 'x-mock-scenario', value: 'latency=10000' }], first_byte_timeout_ms: 20000 }),
      chan('ch-nousage', { extra_headers: [{ name: 'x-mock-scenario', value: 'no-usage' }] }),
      chan('ch-cached', { extra_headers: [{ name: 'x-mock-scenario', value: 'prompt=100;cached=40;reasoning=9;tokens=7' }] }),
    ],
    routes: [
      { model: 'gpt-4o', aliases: ['gpt-4o-latest'], tiers: [{ targets: [{ channel_id: 'ch-main', upstream_model: 'gpt-4o-2024-08-06' }] }] },
      { model: 'gpt-4o-mini', tiers: [{ targets: [{ channel_id: 'ch-pooled', upstream_model: 'gpt-4o-mini-2024-07-18' }] }] },
      {
        model: 'fallback-model', policy: retry(),
        tiers: [
          { targets: [{ channel_id: 'ch-broken', upstream_model: 'primary-up' }] },
          { targets: [{ channel_id: 'ch-backup', upstream_model: 'backup-up' }] },
        ],
      },
      {
        model: 'refused-model', policy: retry(),
        tiers: [
          { targets: [{ channel_id: 'ch-refusing', upstream_model: 'primary-up' }] },
          { targets: [{ channel_id: 'ch-backup', upstream_model: 'backup-up' }] },
        ],
      },
      {
        model: 'breaker-model',
        policy: retry({ circuit_breaker: { consecutive_failures: 2, open_ms: 1500, half_open_probes: 1 } }),
        tiers: [
          { targets: [{ channel_id: 'ch-flaky', upstream_model: 'flaky-up' }] },
          { targets: [{ channel_id: 'ch-backup', upstream_model: 'backup-up' }] },
        ],
      },
      { model: 'slow-model', tiers: [{ targets: [{ channel_id: 'ch-slow' }] }] },
      { model: 'slowhead-model', tiers: [{ targets: [{ channel_id: 'ch-slowhead' }] }] },
      { model: 'nousage-model', tiers: [{ targets: [{ channel_id: 'ch-nousage', upstream_model: 'gpt-4o-2024-08-06' }] }] },
      { model: 'cached-model', tiers: [{ targets: [{ channel_id: 'ch-cached', upstream_model: 'gpt-4o' }] }] },
      ...extraRoutes,
    ],
    price_cards: [
      { id: 'card-usd', version: '1', effective_at_us: '0', currency: 'USD',
        entries: [{ model: 'gpt-4o*', input_per_mtok_nano: '1000000000', output_per_mtok_nano: '1000000000' }] },
      // version 2 is in effect now: exact-model entry beats the glob; rate 1.5x
      { id: 'card-usd', version: '2', effective_at_us: '1', currency: 'USD',
        entries: [
          { model: 'gpt-4o*', input_per_mtok_nano: '1000000000', output_per_mtok_nano: '1000000000' },
          { model: 'gpt-4o', input_per_mtok_nano: '2500000333', output_per_mtok_nano: '10000000007', rate_ppm: '1500000' },
          // every other routed model: what cannot be priced is not served
          { model: '*', input_per_mtok_nano: '100000000', output_per_mtok_nano: '100000000' },
        ] },
      // a future version is not in effect yet
      { id: 'card-usd', version: '3', effective_at_us: '99999999999999999', currency: 'USD',
        entries: [{ model: 'gpt-4o', input_per_mtok_nano: '1', output_per_mtok_nano: '1' }] },
    ],
    policy: { trusted_proxies: ['127.0.0.1/32'], max_request_bytes: '65536' },
  };
}

before(async () => {
  mock = await startMock();
  refusing = await startRefusing();
  agent = await startAgent(snapshot());
  client = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0, timeout: 15000 });
});
after(async () => {
  await agent?.stop();
  await mock?.stop();
  await refusing?.stop();
});

const sdk = (key) => new OpenAI({ apiKey: key, baseURL: agent.base, maxRetries: 0, timeout: 15000 });

async function lastUpstreamRequest() {
  const r = await mock.requests();
  return r.requests[r.requests.length - 1];
}

test('non-streaming answer, provider usage, model rewrite and channel credential upstream', async () => {
  const body = { model: 'gpt-4o', messages, user: 'passthrough-field' };
  const { data, response } = await client.chat.completions.create(body).withResponse();
  assert.equal(data.choices[0].message.content, answerText(DEFAULT_TOKENS));
  assert.equal(data.model, 'gpt-4o-2024-08-06');
  const p = promptTokens(body);
  assert.equal(data.usage.prompt_tokens, p);
  assert.equal(data.usage.completion_tokens, DEFAULT_TOKENS);
  const id = response.headers.get('x-request-id');
  assert.match(id, /^req_/);
  assert.equal(response.headers.get('x-tollgate-attempts'), '1');
  assert.match(response.headers.get('x-tollgate-route'), /channel=ch-main; upstream_model=gpt-4o-2024-08-06/);

  const up = await lastUpstreamRequest();
  const sent = JSON.parse(up.body);
  assert.equal(sent.model, 'gpt-4o-2024-08-06');
  assert.equal(sent.user, 'passthrough-field');
  assert.deepEqual(sent.messages, messages);
  assert.equal(up.headers.authorization, `Bearer ${UPSTREAM_SECRET}`);
  assert.ok(!JSON.stringify(up.headers).includes(KEY), 'the client key never reaches the upstream');

  const rec = await agent.waitRecord(id);
  assert.equal(rec.key_id, 'k-main');
  assert.equal(rec.account_id, 'acct-main');
  assert.equal(rec.requested_model, 'gpt-4o');
  assert.equal(rec.upstream_model, 'gpt-4o-2024-08-06');
  assert.equal(rec.channel_id, 'ch-main');
  assert.equal(rec.bucket, 'credit');
  assert.equal(rec.client_status, 200);
  assert.equal(rec.attempts.length, 1);
  assert.equal(rec.attempts[0].decision, 'ATTEMPT_DECISION_FINAL');
  assert.equal(Number(rec.usage.input_tokens), p);
  assert.equal(Number(rec.usage.output_tokens), DEFAULT_TOKENS);
  assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_PROVIDER');
  assert.equal(JSON.parse(rec.usage.raw_provider_usage).prompt_tokens, p);
  // priced with card-usd version 2 (the newest in effect), the exact entry, rate 1.5x,
  // rounded once half up: (in*2500000333 + out*10000000007) * 1500000 / 1e12
  const cost = (BigInt(p) * 2500000333n + BigInt(DEFAULT_TOKENS) * 10000000007n) * 1500000n;
  const want = (cost + 500000000000n) / 1000000000000n;
  assert.equal(rec.price_card_id, 'card-usd');
  assert.equal(Number(rec.price_version), 2);
  assert.equal(rec.currency, 'USD');
  assert.equal(BigInt(rec.cost_nano), want);
  // upstream cost: the channel's cost rate (0 = 1.0x)
  const upCost = (BigInt(p) * 2500000333n + BigInt(DEFAULT_TOKENS) * 10000000007n + 500000n) / 1000000n;
  assert.equal(BigInt(rec.upstream_cost_nano), upCost);
  const nano = String(want).padStart(10, '0');
  assert.equal(response.headers.get('x-tollgate-cost'), `${nano.slice(0, -9)}.${nano.slice(-9)} USD`);
  // the gateway's own time, without the upstream's: in the head, and (a little later) in the receipt
  const ov = Number(response.headers.get('x-tollgate-overhead-us'));
  assert.ok(Number.isInteger(ov) && ov >= 0, `x-tollgate-overhead-us: ${response.headers.get('x-tollgate-overhead-us')}`);
  assert.ok(ov < Number(rec.finished_at_us) - Number(rec.started_at_us), 'less than the whole request');
  assert.ok(Number(rec.gateway_overhead_us) >= ov);
});

test('alias resolves to its route; X-Tollgate-Run is recorded', async () => {
  const { response } = await client.chat.completions
    .create({ model: 'gpt-4o-latest', messages }, { headers: { 'X-Tollgate-Run': 'run-42' } }).withResponse();
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(rec.route_model, 'gpt-4o');
  assert.equal(rec.requested_model, 'gpt-4o-latest');
  assert.equal(rec.run_id, 'run-42');
});

test('streaming: text arrives chunk by chunk, the usage chunk the gateway added is hidden', async () => {
  const { data: stream, response } = await client.chat.completions
    .create({ model: 'gpt-4o', messages, stream: true }).withResponse();
  let text = '';
  let chunks = 0;
  for await (const c of stream) {
    chunks++;
    assert.ok(!c.usage, 'no usage chunk: the client did not ask for it');
    assert.ok(c.choices.length > 0);
    text += c.choices[0]?.delta?.content ?? '';
  }
  assert.equal(text, answerText(DEFAULT_TOKENS));
  assert.ok(chunks >= DEFAULT_TOKENS);
  const up = await lastUpstreamRequest();
  assert.deepEqual(JSON.parse(up.body).stream_options, { include_usage: true });
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(rec.stream, true);
  assert.equal(rec.finish_reason, 'stop');
  assert.equal(Number(rec.usage.output_tokens), DEFAULT_TOKENS);
  assert.equal(Number(rec.usage.input_tokens), promptTokens({ messages }));
});

test('streaming with include_usage: the client gets the usage chunk', async () => {
  const stream = await client.chat.completions.create({
    model: 'gpt-4o', messages, stream: true, stream_options: { include_usage: true },
  });
  let usage = null;
  for await (const c of stream) if (c.usage) usage = c.usage;
  assert.ok(usage);
  assert.equal(usage.completion_tokens, DEFAULT_TOKENS);
  assert.equal(usage.prompt_tokens, promptTokens({ messages }));
});

// The cookbook's chat rule, computed here with OpenAI's own tiktoken (WASM):
// 3 per message + tokens of role and content, 3 to prime the reply.
function cookbookPrompt(msgs) {
  const enc = get_encoding('o200k_base');
  try {
    let n = 3;
    for (const m of msgs) n += 3 + enc.encode(m.role).length + enc.encode(m.content).length;
    return n;
  } finally { enc.free(); }
}
function o200k(text) {
  const enc = get_encoding('o200k_base');
  try { return enc.encode(text).length; } finally { enc.free(); }
}

test('upstream without usage: prompt and output counted locally (o200k_base) and marked so', async () => {
  for (const stream of [false, true]) {
    const { data, response } = await client.chat.completions
      .create({ model: 'nousage-model', messages, stream }).withResponse();
    if (stream) for await (const c of data) assert.ok(!c.usage);
    else assert.equal(data.usage, undefined);
    const rec = await agent.waitRecord(response.headers.get('x-request-id'));
    assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_LOCAL_TOKENIZER');
    assert.equal(rec.usage.output_source, 'TOKEN_SOURCE_LOCAL_TOKENIZER');
    assert.equal(rec.usage.encoding, 'o200k_base');
    assert.equal(Number(rec.usage.input_tokens), cookbookPrompt(messages));
    assert.equal(Number(rec.usage.output_tokens), o200k(answerText(DEFAULT_TOKENS)));
    assert.equal(rec.usage.raw_provider_usage ?? '', '');
  }
});

test('cached and reasoning tokens: input excludes the cache reads, raw usage kept', async () => {
  const { data, response } = await client.chat.completions.create({ model: 'cached-model', messages }).withResponse();
  assert.equal(data.usage.prompt_tokens, 100);
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(Number(rec.usage.input_tokens), 60);
  assert.equal(Number(rec.usage.cache_read_tokens), 40);
  assert.equal(Number(rec.usage.output_tokens), 16);
  assert.equal(Number(rec.usage.reasoning_tokens), 9);
  assert.equal(JSON.parse(rec.usage.raw_provider_usage).prompt_tokens_details.cached_tokens, 40);
});

test('fallback from a failing primary (HTTP 500): both attempts in the receipt', async () => {
  const { data, response } = await client.chat.completions.create({ model: 'fallback-model', messages }).withResponse();
  assert.equal(data.choices[0].message.content, answerText(DEFAULT_TOKENS));
  assert.equal(data.model, 'backup-up');
  assert.equal(response.headers.get('x-tollgate-attempts'), '2');
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(rec.attempts.length, 2);
  assert.equal(rec.attempts[0].channel_id, 'ch-broken');
  assert.equal(rec.attempts[0].http_status, 500);
  assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_UPSTREAM_5XX');
  assert.equal(rec.attempts[0].decision, 'ATTEMPT_DECISION_FALLBACK_TIER');
  assert.equal(rec.attempts[1].channel_id, 'ch-backup');
  assert.equal(rec.attempts[1].decision, 'ATTEMPT_DECISION_FINAL');
  assert.equal(rec.fallback_used, true);
  assert.equal(rec.route_type, 'ROUTE_TYPE_POOLED');
  assert.equal(rec.bucket, 'wallet');
});

test('fallback from a primary that refuses connections', async () => {
  const { data, response } = await client.chat.completions.create({ model: 'refused-model', messages }).withResponse();
  assert.equal(data.model, 'backup-up');
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_CONNECT');
  assert.equal(rec.attempts[0].http_status ?? 0, 0);
  assert.equal(rec.attempts[1].decision, 'ATTEMPT_DECISION_FINAL');
});

test('circuit breaker opens after consecutive failures, skips the channel, then recovers', async () => {
  await mock.reset('flaky');
  const ids = [];
  for (let i = 0; i < 3; i++) {
    const { data, response } = await client.chat.completions.create({ model: 'breaker-model', messages }).withResponse();
    assert.equal(data.model, 'backup-up');
    ids.push(response.headers.get('x-request-id'));
  }
  const recs = [];
  for (const id of ids) recs.push(await agent.waitRecord(id));
  assert.equal(recs[0].attempts[0].error_class, 'ERROR_CLASS_UPSTREAM_5XX');
  assert.equal(recs[1].attempts[0].error_class, 'ERROR_CLASS_UPSTREAM_5XX');
  // Open now: the third request does not touch the flaky channel.
  assert.equal(recs[2].attempts[0].channel_id, 'ch-flaky');
  assert.equal(recs[2].attempts[0].error_class, 'ERROR_CLASS_CIRCUIT_OPEN');
  assert.equal((await mock.requests('flaky')).count, 2);
  // After open_ms a probe goes through; fail-first is used up, so it succeeds and closes.
  await new Promise((r) => setTimeout(r, 1700));
  const { data, response } = await client.chat.completions.create({ model: 'breaker-model', messages }).withResponse();
  assert.equal(data.model, 'flaky-up');
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(rec.attempts.length, 1);
  assert.equal(rec.channel_id, 'ch-flaky');
  const again = await client.chat.completions.create({ model: 'breaker-model', messages });
  assert.equal(again.model, 'flaky-up');
});

test('401: missing, unknown and revoked keys; 403 paused key', async () => {
  await assert.rejects(sdk('sk-nope').chat.completions.create({ model: 'gpt-4o', messages }), (e) => {
    assert.equal(e.status, 401);
    assert.equal(e.code, 'invalid_api_key');
    assert.match(e.headers.get('x-request-id'), /^req_/);
    return true;
  });
  const r = await fetch(`${agent.base}/chat/completions`, { method: 'POST', body: '{}' });
  assert.equal(r.status, 401);
  assert.equal((await r.json()).error.code, 'missing_api_key');
  await assert.rejects(sdk(KEY_PAUSED).chat.completions.create({ model: 'gpt-4o', messages }), (e) => {
    assert.equal(e.status, 403);
    assert.match(e.message, /paused: budget review/);
    return true;
  });
});

test('x-api-key works like Bearer', async () => {
  const r = await fetch(`${agent.base}/chat/completions`, {
    method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o', messages }),
  });
  assert.equal(r.status, 200);
  assert.equal((await r.json()).usage.completion_tokens, DEFAULT_TOKENS);
});

test('404 unknown model, 403 model not allowed and route type not allowed', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages }), (e) => {
    assert.equal(e.status, 404);
    assert.equal(e.code, 'model_not_found');
    assert.match(e.message, /no-such-model/);
    return true;
  });
  const limited = sdk(KEY_LIMITED);
  await assert.rejects(limited.chat.completions.create({ model: 'fallback-model', messages }), (e) => {
    assert.equal(e.status, 403);
    assert.equal(e.code, 'model_not_allowed');
    return true;
  });
  // gpt-4o is allowed by the glob, but only DIRECT channels serve it.
  await assert.rejects(limited.chat.completions.create({ model: 'gpt-4o', messages }), (e) => {
    assert.equal(e.status, 403);
    assert.equal(e.code, 'route_type_not_allowed');
    return true;
  });
  const ok = await limited.chat.completions.create({ model: 'gpt-4o-mini', messages });
  assert.equal(ok.model, 'gpt-4o-mini-2024-07-18');
});

test('402 when the balance that would pay is exhausted', async () => {
  await assert.rejects(sdk(KEY_POOR).chat.completions.create({ model: 'gpt-4o', messages }), (e) => {
    assert.equal(e.status, 402);
    assert.equal(e.code, 'insufficient_quota');
    return true;
  });
});

test('IP allowlist: X-Forwarded-For is honoured from a trusted proxy only', async () => {
  const ipc = sdk(KEY_IP);
  await assert.rejects(ipc.chat.completions.create({ model: 'gpt-4o', messages }), (e) => {
    assert.equal(e.status, 403);
    assert.equal(e.code, 'ip_not_allowed');
    return true;
  });
  // 127.0.0.1 is a trusted proxy in this snapshot: the rightmost untrusted address is the client.
  const { response } = await ipc.chat.completions.create({ model: 'gpt-4o', messages },
    { headers: { 'X-Forwarded-For': '198.51.100.9, 203.0.113.7, 127.0.0.1' } }).withResponse();
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(rec.client_ip, '203.0.113.7');
  await ipc.chat.completions.create({ model: 'gpt-4o', messages }, { headers: { 'X-Forwarded-For': '2001:db8::5' } });
  await assert.rejects(ipc.chat.completions.create({ model: 'gpt-4o', messages },
    { headers: { 'X-Forwarded-For': '203.0.113.7, 198.51.100.9' } }), (e) => e.status === 403);
});

test('IP allowlist: every X-Forwarded-For line counts, so a client cannot choose its IP', async () => {
  // The client sends its own line naming an allowed address; the trusted
  // proxy (127.0.0.1) appends a second line with the address it saw. The
  // rightmost untrusted address over both lines is the proxy's view.
  const raw = (lines) => new Promise((resolve, reject) => {
    const body = JSON.stringify({ model: 'gpt-4o', messages });
    const s = net.connect(agent.port, '127.0.0.1');
    let got = '';
    s.setTimeout(10000, () => { s.destroy(); reject(new Error('timeout')); });
    s.on('data', (d) => { got += d; });
    s.on('error', reject);
    s.on('end', () => resolve(got));
    s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY_IP}\r\n` +
      `Content-Type: application/json\r\nConnection: close\r\n${lines}Content-Length: ${body.length}\r\n\r\n${body}`);
  });
  let r = await raw('X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.9\r\n');
  assert.match(r, /^HTTP\/1\.1 403 /, r.slice(0, 200));
  assert.match(r, /ip_not_allowed/);
  // the other way round the proxy saw an allowed client
  r = await raw('X-Forwarded-For: 198.51.100.9\r\nX-Forwarded-For: 203.0.113.7, 127.0.0.1\r\n');
  assert.match(r, /^HTTP\/1\.1 200 /, r.slice(0, 200));
});

test('400 malformed JSON names the byte; 413 over the policy size limit', async () => {
  const post = (body) => fetch(`${agent.base}/chat/completions`, {
    method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body,
  });
  let r = await post('{"model":"gpt-4o","messages":[}');
  assert.equal(r.status, 400);
  let j = await r.json();
  assert.equal(j.error.type, 'invalid_request_error');
  assert.match(j.error.message, /malformed JSON at byte 30/);
  assert.match(r.headers.get('x-request-id'), /^req_/);
  r = await post('{"messages":[]}');
  assert.equal(r.status, 400);
  assert.match((await r.json()).error.message, /model parameter/);
  r = await post(JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x'.repeat(70000) }] }));
  assert.equal(r.status, 413);
  j = await r.json();
  assert.equal(j.error.code, 'request_too_large');
  assert.match(j.error.message, /limit is 65536/);
});

test('GET /v1/models lists only the models the key may use', async () => {
  const all = [];
  for await (const m of client.models.list()) all.push(m.id);
  assert.ok(all.includes('gpt-4o') && all.includes('breaker-model'));
  const limited = [];
  for await (const m of sdk(KEY_LIMITED).models.list()) limited.push(m.id);
  assert.deepEqual(limited.sort(), ['gpt-4o', 'gpt-4o-mini']);
});

test('client disconnect mid-stream cancels the upstream call and is recorded', async () => {
  const ac = new AbortController();
  const { data: stream, response } = await client.chat.completions
    .create({ model: 'slow-model', messages, stream: true }, { signal: ac.signal }).withResponse();
  const id = response.headers.get('x-request-id');
  let got = 0;
  const t0 = Date.now();
  try {
    for await (const c of stream) {
      if (c.choices[0]?.delta?.content) got++;
      if (got === 3) ac.abort();
    }
  } catch (e) {
    assert.equal(e.name, 'APIUserAbortError'); // the SDK either ends the loop or throws this
  }
  assert.equal(got, 3);
  // 200 tokens at 50 ms would take 10 s: the record must come long before.
  const rec = await agent.waitRecord(id, 4000);
  assert.ok(Date.now() - t0 < 5000);
  assert.equal(rec.client_disconnected, true);
  assert.equal(rec.error_class, 'ERROR_CLASS_CLIENT_CANCELLED');
  assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_CLIENT_CANCELLED');
  assert.ok(Number(rec.response_bytes) > 0);
});

test('/metrics is served on the metrics listener only: the public port answers 404', async () => {
  const pub = await fetch(`${agent.url}/metrics`);
  assert.equal(pub.status, 404);
  assert.equal((await pub.json()).error.code, 'unknown_url');
  assert.match(agent.metricsUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.notEqual(agent.metricsUrl, agent.url);
  assert.equal((await fetch(`${agent.metricsUrl}/healthz`)).status, 200);
  assert.equal(await (await fetch(`${agent.metricsUrl}/readyz`)).text(), 'ready\n');
  assert.equal((await fetch(`${agent.metricsUrl}/v1/models`)).status, 404);
  // probes stay on the public port too
  assert.equal((await fetch(`${agent.url}/healthz`)).status, 200);
});

test('/metrics: requests, upstream errors, fallbacks, latency and TTFT histograms, outbox depth', async () => {
  const r = await fetch(`${agent.metricsUrl}/metrics`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/plain/);
  const text = await r.text();
  const value = (series) => {
    const line = text.split('\n').find((l) => l.startsWith(`${series} `));
    assert.ok(line, `no ${series} in:\n${text.slice(0, 2000)}`);
    return Number(line.split(' ')[1]);
  };
  const fb = '{model="fallback-model",channel="ch-backup"';
  assert.ok(value(`tollgate_agent_requests_total${fb},code="2xx"}`) >= 1);
  assert.ok(value(`tollgate_agent_fallbacks_total${fb}}`) >= 1);
  assert.ok(value(`tollgate_agent_upstream_errors_total${fb}}`) >= 1);
  assert.ok(value(`tollgate_agent_request_seconds_count${fb}}`) >= 1);
  assert.ok(value(`tollgate_agent_request_seconds_bucket${fb},le="+Inf"}`) >= 1);
  assert.ok(value('tollgate_agent_ttft_seconds_count{model="gpt-4o",channel="ch-main"}') >= 3);
  assert.ok(value('tollgate_agent_requests_total{model="unknown",channel="none",code="4xx"}') >= 1);
  assert.ok(value('tollgate_agent_outbox_records') >= 1);
});

test('client gone before the first byte (slow upstream head): the upstream call is cancelled at once', async () => {
  const ac = new AbortController();
  const t0 = Date.now();
  setTimeout(() => ac.abort(), 300);
  await assert.rejects(client.chat.completions.create({ model: 'slowhead-model', messages }, { signal: ac.signal }));
  // The upstream would answer after 10 s: the receipt must come long before.
  const rec = await until(() => agent.records().find((r) => r.requested_model === 'slowhead-model'),
    { timeoutMs: 3000, what: 'the cancelled request\'s record' });
  assert.ok(Date.now() - t0 < 3500);
  assert.equal(rec.client_disconnected, true);
  assert.equal(rec.error_class, 'ERROR_CLASS_CLIENT_CANCELLED');
  assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_CLIENT_CANCELLED');
  // the agent still serves
  assert.equal((await client.chat.completions.create({ model: 'gpt-4o', messages })).model, 'gpt-4o-2024-08-06');
});

test('SIGHUP swaps in a new snapshot; a bad one is refused and the old one keeps serving', async () => {
  const snap = snapshot([{ model: 'late-model', tiers: [{ targets: [{ channel_id: 'ch-main', upstream_model: 'late-up' }] }] }]);
  agent.reload(snap);
  const r = await until(async () => {
    try { return await client.chat.completions.create({ model: 'late-model', messages }); } catch { return null; }
  }, { timeoutMs: 5000, what: 'late-model to be served' });
  assert.equal(r.model, 'late-up');
  const bad = snapshot([{ model: 'bad-model', tiers: [{ targets: [{ channel_id: 'ch-missing' }] }] }]);
  agent.reload(bad);
  await until(() => agent.proc.output().includes('snapshot refused'), { timeoutMs: 5000, what: 'refusal log' });
  assert.match(agent.proc.output(), /unknown channel \\"ch-missing\\"/);
  assert.equal((await client.chat.completions.create({ model: 'late-model', messages })).model, 'late-up');
});

test('restart without --snapshot serves from the snapshot persisted in the data dir', async () => {
  await agent.stop(); // one agent per data dir: a second one beside it would be refused
  const second = await startAgent(null, { dir: agent.dir, noSnapshot: true });
  try {
    const r = await fetch(`${second.url}/readyz`);
    assert.equal(r.status, 200);
    const c = new OpenAI({ apiKey: KEY, baseURL: second.base, maxRetries: 0 });
    const ans = await c.chat.completions.create({ model: 'late-model', messages });
    assert.equal(ans.model, 'late-up');
  } finally {
    await second.stop();
  }
});
