// tollgate-agent speaking the Anthropic Messages API and calling Anthropic
// channels, through both official SDKs against mockllm: the four pairings
// (OpenAI / Anthropic client x OpenAI / Anthropic channel), JSON and
// streamed, tools and a three-turn tool chain with parallel calls, stop
// reasons, cache usage billed once, the receipt (client protocol, endpoint,
// every attempt), fallback from an Anthropic channel to an OpenAI one,
// errors and refusals in each client's shape, count_tokens and
// /v1/models in Anthropic's shape.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startMock, answerText, DEFAULT_TOKENS } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';

const KEY = 'sk-tg-anth-main';
const KEY_POOR = 'sk-tg-anth-poor';
let mock;
let agent;
let oai;
let ant;

function snapshot() {
  const key = (id, secret, account) => ({
    id, account_id: account, secret_sha256: keyHash(secret), display_prefix: secret.slice(0, 9),
    status: 'KEY_STATUS_ACTIVE', expose_cost: true,
  });
  const chan = (id, provider, more = {}) => ({
    id, name: id, provider, base_url: `${mock.url}/v1`, credential: `sk-upstream-${id}`,
    route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE', first_byte_timeout_ms: 5000, ...more,
  });
  const one = (model, channel_id, upstream_model) => ({ model, tiers: [{ targets: [{ channel_id, upstream_model }] }] });
  return {
    revision: '1',
    accounts: [
      { id: 'acct-main', name: 'main', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' },
      { id: 'acct-poor', name: 'poor', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' },
    ],
    balances: [
      { account_id: 'acct-main', bucket: 'credit', currency: 'USD', balance_nano: '100000000000' },
      { account_id: 'acct-poor', bucket: 'credit', currency: 'USD', balance_nano: '0' },
    ],
    keys: [key('k-main', KEY, 'acct-main'), key('k-poor', KEY_POOR, 'acct-poor')],
    channels: [
      chan('ch-oai', 'PROVIDER_TYPE_OPENAI'),
      chan('ch-anth', 'PROVIDER_TYPE_ANTHROPIC'),
      chan('ch-anth-cached', 'PROVIDER_TYPE_ANTHROPIC', { extra_headers: [{ name: 'x-mock-scenario', value: 'prompt=50;cached=30;cache_write=12;tokens=4' }] }),
      chan('ch-oai-cached', 'PROVIDER_TYPE_OPENAI', { extra_headers: [{ name: 'x-mock-scenario', value: 'prompt=50;cached=30;tokens=4' }] }),
      chan('ch-anth-broken', 'PROVIDER_TYPE_ANTHROPIC', { extra_headers: [{ name: 'x-mock-scenario', value: 'status=500' }] }),
    ],
    routes: [
      one('gpt-4o', 'ch-oai', 'gpt-4o-2024-08-06'),
      one('claude-sonnet-4-5', 'ch-anth', 'claude-sonnet-4-5-20250929'),
      one('claude-cached', 'ch-anth-cached', 'claude-sonnet-4-5'),
      one('gpt-cached', 'ch-oai-cached', 'gpt-4o'),
      {
        model: 'claude-fallback',
        policy: { max_attempts: 3, retry_on_5xx: true, fallback_enabled: true, backoff_initial_ms: 10, backoff_max_ms: 50 },
        tiers: [
          { targets: [{ channel_id: 'ch-anth-broken', upstream_model: 'claude-primary' }] },
          { targets: [{ channel_id: 'ch-oai', upstream_model: 'gpt-backup' }] },
        ],
      },
    ],
    price_cards: [{
      id: 'card', version: '1', effective_at_us: '1', currency: 'USD',
      entries: [{ model: '*', input_per_mtok_nano: '1000000000', output_per_mtok_nano: '2000000000',
        cache_read_per_mtok_nano: '100000000', cache_write_per_mtok_nano: '1250000000' }],
    }],
  };
}

before(async () => {
  mock = await startMock();
  agent = await startAgent(snapshot());
  oai = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0, timeout: 15000 });
  ant = new Anthropic({ apiKey: KEY, baseURL: agent.url, maxRetries: 0, timeout: 15000 });
});
after(async () => {
  await agent?.stop();
  await mock?.stop();
});

const base = (model) => ({ model, max_tokens: 100, system: 'Be terse.', messages: [{ role: 'user', content: 'Hello there, model.' }] });
const weather = {
  name: 'get_weather', description: 'Weather of a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
};
const oaiWeather = { type: 'function', function: { name: weather.name, description: weather.description, parameters: weather.input_schema } };

async function lastUpstream() {
  const r = await mock.requests();
  return r.requests[r.requests.length - 1];
}

for (const [model, channel] of [['claude-sonnet-4-5', 'anthropic'], ['gpt-4o', 'openai']]) {
  test(`Anthropic client, ${channel} channel: a message, its receipt`, async () => {
    const { data, response } = await ant.messages.create(base(model)).withResponse();
    assert.equal(data.type, 'message');
    assert.equal(data.content[0].type, 'text');
    assert.equal(data.content[0].text, answerText(DEFAULT_TOKENS));
    assert.equal(data.stop_reason, 'end_turn');
    assert.equal(data.usage.output_tokens, DEFAULT_TOKENS);
    const up = await lastUpstream();
    if (channel === 'anthropic') {
      assert.equal(up.path, '/v1/messages');
      assert.equal(up.headers['x-api-key'], 'sk-upstream-ch-anth');
      assert.ok(up.headers['anthropic-version']);
    } else {
      assert.equal(up.path, '/v1/chat/completions');
      assert.equal(up.headers.authorization, 'Bearer sk-upstream-ch-oai');
    }
    const rec = await agent.waitRecord(response.headers.get('x-request-id'));
    assert.equal(rec.client_protocol, 'CLIENT_PROTOCOL_ANTHROPIC');
    assert.equal(rec.endpoint, '/v1/messages');
    assert.equal(rec.usage.output_tokens, String(DEFAULT_TOKENS));
    assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_PROVIDER');
    assert.ok(BigInt(rec.cost_nano) > 0n);
  });

  test(`Anthropic client, ${channel} channel: streamed, the SDK's final message`, async () => {
    const s = ant.messages.stream(base(model));
    let text = '';
    s.on('text', (t) => { text += t; });
    const msg = await s.finalMessage();
    assert.equal(text, answerText(DEFAULT_TOKENS));
    assert.equal(msg.stop_reason, 'end_turn');
    assert.equal(msg.usage.output_tokens, DEFAULT_TOKENS);
    assert.ok(msg.usage.input_tokens > 0);
  });

  test(`Anthropic client, ${channel} channel: tool_use, stop_reason tool_use`, async () => {
    const r = await ant.messages.create({ ...base(model), tools: [weather], tool_choice: { type: 'any' } });
    assert.equal(r.stop_reason, 'tool_use');
    const tu = r.content.find((b) => b.type === 'tool_use');
    assert.equal(tu.name, 'get_weather');
    assert.deepEqual(tu.input, { q: 'mock' });
    const msg = await ant.messages.stream({ ...base(model), tools: [weather] }).finalMessage();
    assert.equal(msg.stop_reason, 'tool_use');
    assert.deepEqual(msg.content.find((b) => b.type === 'tool_use').input, { q: 'mock' });
  });

  test(`Anthropic client, ${channel} channel: a three-turn tool chain with parallel calls`, async () => {
    const messages = [
      { role: 'user', content: 'Weather in Paris and Rome?' },
      { role: 'assistant', content: [
        { type: 'text', text: 'Checking both.' },
        { type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: { city: 'Paris' } },
        { type: 'tool_use', id: 'toolu_2', name: 'get_weather', input: { city: 'Rome' } },
      ] },
      { role: 'user', content: [
        { type: 'tool_result', tool_use_id: 'toolu_1', content: 'sunny' },
        { type: 'tool_result', tool_use_id: 'toolu_2', content: 'lookup failed', is_error: true },
      ] },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_3', name: 'get_weather', input: { city: 'Rome' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_3', content: 'rainy' }] },
    ];
    const r = await ant.messages.create({ model, max_tokens: 50, system: ['One.', 'Two.'].map((text) => ({ type: 'text', text })), tools: [weather], tool_choice: { type: 'auto' }, messages });
    // the stop reason follows the blocks (never end_turn beside a call)
    assert.equal(r.stop_reason, r.content.some((b) => b.type === 'tool_use') ? 'tool_use' : 'end_turn');
    const up = JSON.parse((await lastUpstream()).body);
    if (channel === 'openai') {
      const calls = up.messages.find((m) => m.role === 'assistant').tool_calls;
      assert.deepEqual(calls.map((c) => [c.id, JSON.parse(c.function.arguments).city]), [['toolu_1', 'Paris'], ['toolu_2', 'Rome']]);
      assert.deepEqual(up.messages.filter((m) => m.role === 'tool').map((m) => m.tool_call_id), ['toolu_1', 'toolu_2', 'toolu_3']);
      // every system prompt, in order
      assert.deepEqual(up.messages.filter((m) => m.role === 'system').map((m) => m.content), ['One.', 'Two.']);
      assert.equal(up.tool_choice, 'auto');
    } else {
      assert.equal(up.messages.length, 5);
      assert.equal(up.messages[2].content[1].is_error, true);
    }
  });

  test(`OpenAI client, ${channel} channel: chat, streamed with usage, tool calls`, async () => {
    const messages = [{ role: 'system', content: 'Be terse.' }, { role: 'user', content: 'Hello there, model.' }];
    const r = await oai.chat.completions.create({ model, messages });
    assert.equal(r.choices[0].message.content, answerText(DEFAULT_TOKENS));
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.equal(r.usage.completion_tokens, DEFAULT_TOKENS);
    const st = await oai.chat.completions.create({ model, messages, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage = null;
    let finish = null;
    for await (const ck of st) {
      if (ck.usage) usage = ck.usage;
      if (ck.choices[0]?.delta?.content) text += ck.choices[0].delta.content;
      if (ck.choices[0]?.finish_reason) finish = ck.choices[0].finish_reason;
    }
    assert.equal(text, answerText(DEFAULT_TOKENS));
    assert.equal(finish, 'stop');
    assert.equal(usage.completion_tokens, DEFAULT_TOKENS);
    const t = await oai.chat.completions.create({ model, messages, tools: [oaiWeather], tool_choice: 'required' });
    assert.equal(t.choices[0].finish_reason, 'tool_calls');
    assert.equal(t.choices[0].message.tool_calls[0].function.name, 'get_weather');
    assert.deepEqual(JSON.parse(t.choices[0].message.tool_calls[0].function.arguments), { q: 'mock' });
    if (channel === 'anthropic') {
      const up = JSON.parse((await lastUpstream()).body);
      assert.deepEqual(up.tool_choice, { type: 'any' });
      assert.ok(up.max_tokens > 0, 'max_tokens supplied for the Anthropic channel');
    }
  });
}

test('OpenAI client on an Anthropic channel: max_tokens cut gives finish_reason length', async () => {
  const r = await oai.chat.completions.create({ model: 'claude-sonnet-4-5', max_tokens: 3, messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 3);
});

test('cache usage: Anthropic reads and writes billed once, OpenAI cached tokens once', async () => {
  const { data, response } = await ant.messages.create(base('claude-cached')).withResponse();
  assert.equal(data.usage.input_tokens, 8);
  assert.equal(data.usage.cache_read_input_tokens, 30);
  assert.equal(data.usage.cache_creation_input_tokens, 12);
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.deepEqual([rec.usage.input_tokens, rec.usage.cache_read_tokens, rec.usage.cache_write_tokens, rec.usage.output_tokens],
    ['8', '30', '12', '4']);
  // 8 x 1 + 30 x 0.1 + 12 x 1.25 + 4 x 2 (USD per 1M tokens) = 34 nano-USD x 1000
  assert.equal(rec.cost_nano, String(8 * 1000 + 30 * 100 + 12 * 1250 + 4 * 2000));
  assert.equal(JSON.parse(rec.usage.raw_provider_usage).cache_creation_input_tokens, 12);
  // an Anthropic client on an OpenAI channel: prompt_tokens include the cached ones
  const o = await ant.messages.create(base('gpt-cached')).withResponse();
  assert.equal(o.data.usage.input_tokens, 20);
  assert.equal(o.data.usage.cache_read_input_tokens, 30);
  const r2 = await agent.waitRecord(o.response.headers.get('x-request-id'));
  assert.deepEqual([r2.usage.input_tokens, r2.usage.cache_read_tokens], ['20', '30']);
  // streamed: the same counts from message_start / message_delta
  const s = await ant.messages.stream(base('claude-cached')).finalMessage();
  assert.deepEqual([s.usage.input_tokens, s.usage.cache_read_input_tokens, s.usage.cache_creation_input_tokens], [8, 30, 12]);
});

test('fallback across protocols: an Anthropic primary failing, an OpenAI backup serving', async () => {
  const { data, response } = await ant.messages.create(base('claude-fallback')).withResponse();
  assert.equal(data.content[0].text, answerText(DEFAULT_TOKENS));
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(rec.attempts.length, 2);
  assert.equal(rec.attempts[0].channel_id, 'ch-anth-broken');
  assert.equal(rec.attempts[0].http_status, 500);
  assert.equal(rec.attempts[1].channel_id, 'ch-oai');
  assert.equal(rec.attempts[1].decision, 'ATTEMPT_DECISION_FINAL');
  assert.equal(rec.fallback_used, true);
  assert.equal(response.headers.get('x-tollgate-route'), 'claude-fallback; channel=ch-oai; upstream_model=gpt-backup');
});

test('errors and refusals in each client\'s shape: 400, 401, 404, 402', async () => {
  const bad = new Anthropic({ apiKey: 'sk-wrong', baseURL: agent.url, maxRetries: 0 });
  await assert.rejects(bad.messages.create(base('claude-sonnet-4-5')), (e) => {
    assert.equal(e.status, 401);
    assert.equal(e.error.type, 'error');
    assert.equal(e.error.error.type, 'authentication_error');
    return true;
  });
  await assert.rejects(ant.messages.create(base('no-such-model')), (e) => {
    assert.equal(e.status, 404);
    assert.equal(e.error.error.type, 'not_found_error');
    return true;
  });
  const poor = new Anthropic({ apiKey: KEY_POOR, baseURL: agent.url, maxRetries: 0 });
  await assert.rejects(poor.messages.create(base('claude-sonnet-4-5')), (e) => {
    assert.equal(e.status, 402);
    assert.equal(e.error.error.type, 'billing_error');
    return true;
  });
  // max_tokens is required on /v1/messages, whatever channel serves it
  const r = await fetch(`${agent.url}/v1/messages`, {
    method: 'POST', headers: { 'x-api-key': KEY, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }),
  });
  assert.equal(r.status, 400);
  const j = await r.json();
  assert.equal(j.type, 'error');
  assert.equal(j.error.type, 'invalid_request_error');
  assert.match(j.error.message, /max_tokens/);
  // the OpenAI client keeps its own shapes
  const badOai = new OpenAI({ apiKey: 'sk-wrong', baseURL: agent.base, maxRetries: 0 });
  await assert.rejects(badOai.chat.completions.create({ model: 'claude-sonnet-4-5', messages: [{ role: 'user', content: 'x' }] }), (e) => {
    assert.equal(e.status, 401);
    assert.equal(e.code, 'invalid_api_key');
    return true;
  });
  const poorOai = new OpenAI({ apiKey: KEY_POOR, baseURL: agent.base, maxRetries: 0 });
  await assert.rejects(poorOai.chat.completions.create({ model: 'claude-sonnet-4-5', messages: [{ role: 'user', content: 'x' }] }), (e) => {
    assert.equal(e.status, 402);
    assert.equal(e.code, 'insufficient_quota');
    return true;
  });
  await assert.rejects(oai.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }), (e) => {
    assert.equal(e.status, 404);
    assert.equal(e.code, 'model_not_found');
    return true;
  });
});

test('count_tokens: answered locally, exact for an OpenAI-encoded route, an estimate for Claude', async () => {
  const body = { model: 'gpt-4o', system: 'Be terse.', messages: [{ role: 'user', content: 'Hello there, model.' }] };
  const before = (await mock.requests()).count;
  const r = await ant.messages.countTokens(body).withResponse();
  assert.ok(r.data.input_tokens > 5 && r.data.input_tokens < 40, String(r.data.input_tokens));
  assert.equal(r.response.headers.get('x-tollgate-token-count'), 'exact');
  const c = await ant.messages.countTokens({ ...body, model: 'claude-sonnet-4-5' }).withResponse();
  assert.equal(c.response.headers.get('x-tollgate-token-count'), 'estimate');
  assert.ok(c.data.input_tokens > 0);
  assert.equal((await mock.requests()).count, before, 'nothing went upstream');
  await assert.rejects(ant.messages.countTokens({ ...body, model: 'nope' }), (e) => e.status === 404 && e.error.error.type === 'not_found_error');
});

test('GET /v1/models in Anthropic\'s shape when anthropic-version is sent', async () => {
  const page = await ant.models.list();
  const ids = page.data.map((m) => m.id);
  assert.ok(ids.includes('claude-sonnet-4-5') && ids.includes('gpt-4o'));
  assert.equal(page.data[0].type, 'model');
  const one = await ant.models.retrieve('claude-sonnet-4-5');
  assert.equal(one.id, 'claude-sonnet-4-5');
  assert.match(one.created_at, /^\d{4}-\d\d-\d\dT/);
  const o = await oai.models.list();
  assert.equal(o.data[0].object, 'model');
});

// Same protocol both sides: the client gets the upstream's bytes. The
// request the agent sent upstream is replayed to mockllm directly, and the
// bytes must be equal but for mockllm's message id, which counts requests. mockllm's `ping` events and
// `service_tier` members are what a re-encoder would drop. Metering reads
// the same stream: cache reads and writes billed once, as before.
async function viaAgentAndDirect(path, body, clientHeaders) {
  const r = await fetch(`${agent.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...clientHeaders }, body: JSON.stringify(body) });
  assert.equal(r.status, 200);
  const got = Buffer.from(await r.arrayBuffer());
  const up = await lastUpstream();
  const headers = {};
  for (const h of ['content-type', 'anthropic-version', 'x-api-key', 'authorization', 'x-mock-scenario']) if (up.headers[h]) headers[h] = up.headers[h];
  const d = await fetch(`${mock.url}${up.path}`, { method: 'POST', headers, body: up.body });
  const sent = Buffer.from(await d.arrayBuffer());
  return { got, sent, id: r.headers.get('x-request-id') };
}

function sameButId(got, sent, re) {
  const n = (b) => [...b.toString('latin1').matchAll(re)].length;
  assert.ok(n(got) > 0 && n(got) === n(sent));
  assert.equal(got.length, sent.length);
  assert.equal(got.toString('latin1').replace(re, 'ID'), sent.toString('latin1').replace(re, 'ID'));
}

for (const stream of [true, false]) {
  test(`Anthropic client, Anthropic channel: ${stream ? 'the stream' : 'the JSON answer'} byte for byte, metered as before`, async () => {
    const { got, sent, id } = await viaAgentAndDirect('/v1/messages', { ...base('claude-cached'), stream },
      { 'x-api-key': KEY, 'anthropic-version': '2023-06-01' });
    sameButId(got, sent, /msg_mock[0-9a-f]+/g);
    if (stream) {
      assert.match(got.toString(), /event: ping\n/);
      assert.match(got.toString(), /"service_tier":"standard"/);
    }
    const rec = await agent.waitRecord(id);
    assert.equal(Number(rec.usage.input_tokens), 8);
    assert.equal(Number(rec.usage.cache_read_tokens), 30);
    assert.equal(Number(rec.usage.cache_write_tokens), 12);
    assert.equal(Number(rec.usage.output_tokens), 4);
    assert.equal(BigInt(rec.cost_nano), 8n * 1000n + 30n * 100n + 12n * 1250n + 4n * 2000n);
  });
}

test('OpenAI client, OpenAI channel: the stream byte for byte (already passthrough), metered', async () => {
  const { got, sent, id } = await viaAgentAndDirect('/v1/chat/completions',
    { model: 'gpt-cached', messages: [{ role: 'user', content: 'Hello.' }], stream: true, stream_options: { include_usage: true } },
    { authorization: `Bearer ${KEY}` });
  sameButId(got, sent, /chatcmpl-mock[0-9a-f]+/g);
  const rec = await agent.waitRecord(id);
  assert.equal(Number(rec.usage.cache_read_tokens), 30);
  assert.equal(BigInt(rec.cost_nano), 20n * 1000n + 30n * 100n + 4n * 2000n);
});
