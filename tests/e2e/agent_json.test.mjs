// Issue 14 as a hostile upstream would play it against tollgate-agent, with
// mockllm scripted per channel and the official `openai` SDK as the client:
// usage read by structure (a Responses answer echoing the request's tools,
// whose JSON schema has a property named `usage`; a chat answer with a
// nested `usage` before the top-level one), counts read strictly and held to
// the request's bounds, a malformed 200 retried instead of relayed, a
// stream answered with plain JSON, a stream cut by the upstream, an
// upstream's auth failure, and upstream error bodies kept out of client
// answers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMock, answerText } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';

const KEY = 'sk-tg-json';
const PRICE = { in: 1000000000n, out: 2000000000n }; // nano-units per 1M tokens

let mock;
let agent;
let client;

function snapshot() {
  const chan = (id, scenario) => ({
    id, name: id, provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`, credential: 'sk-upstream-up',
    route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE', first_byte_timeout_ms: 5000,
    extra_headers: scenario ? [{ name: 'x-mock-scenario', value: scenario }] : [],
  });
  const policy = { max_attempts: 3, retry_on_5xx: true, fallback_enabled: true, backoff_initial_ms: 5, backoff_max_ms: 10 };
  const one = (model, ch) => ({ model, policy, tiers: [{ targets: [{ channel_id: ch, upstream_model: 'up-model' }] }] });
  const two = (model, a, b) => ({ model, policy, tiers: [{ targets: [{ channel_id: a, upstream_model: 'up-a' }] },
    { targets: [{ channel_id: b, upstream_model: 'up-b' }] }] });
  return {
    revision: '1',
    accounts: [{ id: 'acct', name: 'acct', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
    balances: [{ account_id: 'acct', bucket: 'credit', currency: 'USD', balance_nano: '100000000000' }],
    keys: [{ id: 'k-json', account_id: 'acct', secret_sha256: keyHash(KEY), display_prefix: KEY.slice(0, 9),
      status: 'KEY_STATUS_ACTIVE', expose_cost: true }],
    channels: [
      chan('ch-ok', 'prompt=120;tokens=9'),
      chan('ch-nested', 'nested-usage;prompt=50000;report-output=50000'),
      chan('ch-frac', 'report-output=2500000000.0'),
      chan('ch-exp', 'report-output=1e+30'),
      chan('ch-over', 'report-output=5000'),
      chan('ch-inflate', 'prompt=1000000'),
      chan('ch-malformed', 'malformed'),
      // the error body's key is cut by the 120-byte limit inside a character
      chan('ch-utf8-even', `status=500;key=${'é'.repeat(31)}`),
      chan('ch-utf8-odd', `status=500;key=x${'é'.repeat(31)}`),
      chan('ch-401', 'status=401'),
      chan('ch-403', 'status=403'),
      chan('ch-404', 'status=404'),
      chan('ch-400', 'status=400'),
      chan('ch-json', 'prompt=120;tokens=9;ignore-stream'),
      chan('ch-json-tool', 'prompt=120;tokens=9;ignore-stream'),
      chan('ch-cut', 'prompt=120;tokens=9;disconnect=3'),
      chan('ch-lone', 'prompt=120;tokens=9;lone-surrogate'),
      chan('ch-307', 'status=307;location=http://elsewhere.example/v1/chat/completions'),
      chan('ch-307-bare', 'status=307'),
      chan('ch-badfinal', 'prompt=120;tokens=9;malformed-final'),
    ],
    routes: [
      one('m-ok', 'ch-ok'),
      one('m-nested', 'ch-nested'),
      one('m-frac', 'ch-frac'),
      one('m-exp', 'ch-exp'),
      one('m-over', 'ch-over'),
      one('m-inflate', 'ch-inflate'),
      two('m-malformed', 'ch-malformed', 'ch-ok'),
      one('m-malformed-only', 'ch-malformed'),
      one('m-utf8-even', 'ch-utf8-even'),
      one('m-utf8-odd', 'ch-utf8-odd'),
      two('m-auth', 'ch-401', 'ch-ok'),
      two('m-nomodel', 'ch-404', 'ch-ok'),
      { ...one('m-auth-only', 'ch-403'), policy: { ...policy, circuit_breaker: { consecutive_failures: 2, open_ms: 60000 } } },
      one('m-bad', 'ch-400'),
      one('m-json', 'ch-json'),
      one('m-cut', 'ch-cut'),
      one('m-lone', 'ch-lone'),
      two('m-redirect', 'ch-307', 'ch-ok'),
      one('m-redirect-only', 'ch-307-bare'),
      one('m-badfinal', 'ch-badfinal'),
    ],
    price_cards: [{
      id: 'card', version: '1', effective_at_us: '1', currency: 'USD',
      entries: [{ model: 'm-*', input_per_mtok_nano: String(PRICE.in), output_per_mtok_nano: String(PRICE.out) }],
    }],
    policy: {},
  };
}

function cost(input, output) {
  return (BigInt(input) * PRICE.in + BigInt(output) * PRICE.out + 500000n) / 1000000n;
}

function record(id) {
  const r = agent.outbox().find((h) => h.record.request_id === id);
  assert.ok(r, `record ${id} is spooled`);
  return r.record;
}

before(async () => {
  mock = await startMock();
  agent = await startAgent(snapshot());
  client = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0, timeout: 30000 });
});
after(async () => {
  await agent?.stop();
  await mock?.stop();
});

// A client's tool whose JSON schema has a property named `usage`, with a
// default that looks like a usage object: the Responses API echoes `tools`
// before its own top-level usage.
const TOOLS = [{
  type: 'function', name: 'lookup', description: 'reads a meter',
  parameters: { type: 'object', properties: { usage: { type: 'object', default: { input_tokens: 1, output_tokens: 1 },
    properties: { input_tokens: { type: 'integer' }, output_tokens: { type: 'integer' } } } } },
}];

test('responses (JSON) echoing a tool schema with a `usage` property: billed from the top-level usage', async () => {
  const { data, response } = await client.responses.create({ model: 'm-ok', input: 'read the meter', tools: TOOLS })
    .withResponse();
  assert.equal(data.tools[0].parameters.properties.usage.default.input_tokens, 1, 'mockllm echoes the tools');
  assert.equal(data.usage.input_tokens, 120);
  const rec = record(response.headers.get('x-request-id'));
  assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_PROVIDER');
  assert.equal(Number(rec.usage.input_tokens), 120);
  assert.equal(Number(rec.usage.output_tokens), 9);
  assert.equal(BigInt(rec.cost_nano), cost(120, 9));
});

test('responses (stream) echoing a tool schema with a `usage` property: billed from response.usage', async () => {
  const { data: stream, response } = await client.responses.create({ model: 'm-ok', input: 'read the meter',
    tools: TOOLS, stream: true }).withResponse();
  let final;
  for await (const ev of stream) if (ev.type === 'response.completed') final = ev.response;
  assert.equal(final.tools[0].name, 'lookup');
  const rec = record(response.headers.get('x-request-id'));
  assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_PROVIDER');
  assert.equal(Number(rec.usage.input_tokens), 120);
  assert.equal(Number(rec.usage.output_tokens), 9);
  assert.equal(BigInt(rec.cost_nano), cost(120, 9));
});

test('chat: a nested `usage` object before the top-level one is not the usage (50,000/50,000, not 1/1)', async () => {
  const content = ' hello'.repeat(50000); // a prompt the gateway counts near 50,000 tokens itself
  const { data, response } = await client.chat.completions.create({ model: 'm-nested',
    messages: [{ role: 'user', content }] }).withResponse();
  assert.equal(data.usage.prompt_tokens, 50000);
  const rec = record(response.headers.get('x-request-id'));
  assert.equal(Number(rec.usage.input_tokens), 50000);
  assert.equal(Number(rec.usage.output_tokens), 50000);
  assert.ok(!rec.usage.provider_usage_clamped);
  assert.equal(BigInt(rec.cost_nano), cost(50000, 50000));
});

for (const [model, text] of [['m-frac', '2500000000.0'], ['m-exp', '1e+30']]) {
  test(`usage with a count written ${text}: not believed, flagged, counted locally`, async () => {
    const { response } = await client.chat.completions.create({ model,
      messages: [{ role: 'user', content: 'hi' }] }).withResponse();
    const rec = record(response.headers.get('x-request-id'));
    assert.equal(rec.usage.provider_usage_invalid, true);
    assert.notEqual(rec.usage.output_source, 'TOKEN_SOURCE_PROVIDER');
    assert.ok(Number(rec.usage.output_tokens) > 0 && Number(rec.usage.output_tokens) < 100,
      `output counted locally: ${rec.usage.output_tokens}`);
    assert.ok(rec.usage.raw_provider_usage.includes(text));
    assert.ok(BigInt(rec.cost_nano) < 1000000n, `cost stays small: ${rec.cost_nano}`);
  });
}

test('output above the request\'s max_tokens: billed at the cap, flagged, raw usage kept', async () => {
  const { response } = await client.chat.completions.create({ model: 'm-over', max_tokens: 10,
    messages: [{ role: 'user', content: 'hi' }] }).withResponse();
  const rec = record(response.headers.get('x-request-id'));
  assert.equal(rec.usage.provider_usage_clamped, true);
  assert.equal(Number(rec.usage.output_tokens), 10);
  assert.ok(rec.usage.raw_provider_usage.includes('"completion_tokens":5000'));
  assert.equal(BigInt(rec.cost_nano), cost(Number(rec.usage.input_tokens), 10));
});

test('output caps: a repeated cap is refused; of different cap names the largest bounds the bill', async () => {
  const post = (body) => fetch(`${agent.base}/chat/completions`, { method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body });
  // an upstream keeps the last copy (JSON.parse): billing against the first would bill 1 token for 4000
  const dup = await post('{"model":"m-over","max_tokens":1,"max_tokens":4000,"messages":[{"role":"user","content":"hi"}]}');
  assert.equal(dup.status, 400);
  const body = await dup.json();
  assert.equal(body.error.type, 'invalid_request_error');
  assert.match(body.error.message, /max_tokens appears twice/);
  // a provider may honour either name: the output is held to the larger
  const r = await post(JSON.stringify({ model: 'm-over', max_tokens: 1, max_completion_tokens: 4000,
    messages: [{ role: 'user', content: 'hi' }] }));
  assert.equal(r.status, 200);
  const rec = record(r.headers.get('x-request-id'));
  assert.equal(rec.usage.provider_usage_clamped, true);
  assert.equal(Number(rec.usage.output_tokens), 4000);
  assert.equal(BigInt(rec.cost_nano), cost(Number(rec.usage.input_tokens), 4000));
});

test('input far above the local count: billed as reported (providers add input), flagged for review', async () => {
  // a Responses request with web_search: the provider's search results are input the gateway never sees
  for (const call of [
    () => client.chat.completions.create({ model: 'm-inflate', messages: [{ role: 'user', content: 'hi' }] }),
    () => client.responses.create({ model: 'm-inflate', input: 'news today?', tools: [{ type: 'web_search' }] }),
  ]) {
    const { response } = await call().withResponse();
    const rec = record(response.headers.get('x-request-id'));
    assert.equal(rec.usage.provider_input_above_bound, true);
    assert.ok(!rec.usage.provider_usage_clamped);
    assert.equal(Number(rec.usage.input_tokens), 1000000);
    assert.equal(BigInt(rec.cost_nano), cost(1000000, Number(rec.usage.output_tokens)));
  }
  // within the bound: no flag
  const { response } = await client.chat.completions.create({ model: 'm-ok',
    messages: [{ role: 'user', content: 'hi' }] }).withResponse();
  assert.ok(!record(response.headers.get('x-request-id')).usage.provider_input_above_bound);
});

test('a malformed 200 answer is a failed attempt: the next tier serves, nothing malformed is relayed', async () => {
  const { data, response } = await client.chat.completions.create({ model: 'm-malformed',
    messages: [{ role: 'user', content: 'hi' }] }).withResponse();
  assert.equal(data.choices.length, 1);
  const rec = record(response.headers.get('x-request-id'));
  assert.equal(rec.attempts.length, 2);
  assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_MALFORMED');
  assert.equal(rec.attempts[0].decision, 'ATTEMPT_DECISION_FALLBACK_TIER');
  assert.equal(rec.channel_id, 'ch-ok');
  const only = await fetch(`${agent.base}/chat/completions`, { method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm-malformed-only', messages: [{ role: 'user', content: 'hi' }] }) });
  assert.equal(only.status, 502);
  const rec2 = record(only.headers.get('x-request-id'));
  assert.equal(rec2.cost_nano || '0', '0');
  assert.ok(rec2.attempts.every((a) => a.error_class === 'ERROR_CLASS_MALFORMED'));
});

test('strings from outside reach the record as valid UTF-8: error bodies cut on characters, headers cleaned', async () => {
  const post = (model, headers = {}) => fetch(`${agent.base}/chat/completions`, { method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }) });
  for (const model of ['m-utf8-even', 'm-utf8-odd']) {
    const r = await post(model);
    assert.equal(r.status, 502);
    const msg = record(r.headers.get('x-request-id')).attempts[0].error_message;
    assert.match(msg, /^HTTP 500: \{"error"/);
    assert.ok(msg.includes('éé'), msg);
    assert.ok(!msg.includes('\ufffd'), `cut on a character boundary: ${msg}`);
  }
  // a latin-1 header value arrives as the byte 0xff: replaced, not kept raw
  const r = await post('m-ok', { 'user-agent': 'agent\u00ffx', 'x-tollgate-run': 'run\u00ff1' });
  assert.equal(r.status, 200);
  const rec = record(r.headers.get('x-request-id'));
  assert.equal(rec.user_agent, 'agent\ufffdx');
  assert.equal(rec.run_id, 'run\ufffd1');
});

test('an upstream 401 (or 404 for its model) is a channel failure: the next tier serves', async () => {
  for (const [model, status] of [['m-auth', 401], ['m-nomodel', 404]]) {
    const { data, response } = await client.chat.completions.create({ model,
      messages: [{ role: 'user', content: 'hi' }] }).withResponse();
    assert.equal(data.choices.length, 1);
    const rec = record(response.headers.get('x-request-id'));
    assert.equal(rec.attempts[0].http_status, status);
    assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_CHANNEL_REJECTED');
    assert.equal(rec.attempts[0].decision, 'ATTEMPT_DECISION_FALLBACK_TIER');
    assert.equal(rec.channel_id, 'ch-ok');
  }
});

test('an upstream 403 with nothing else to serve: 502 in the gateway\'s words, and the breaker opens', async () => {
  const post = () => fetch(`${agent.base}/chat/completions`, { method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm-auth-only', messages: [{ role: 'user', content: 'hi' }] }) });
  for (let i = 0; i < 2; i++) {
    const r = await post();
    assert.equal(r.status, 502);
    const body = await r.json();
    assert.equal(body.error.code, 'upstream_channel_rejected');
    assert.ok(!body.error.message.includes('mockllm'), body.error.message);
    const rec = record(r.headers.get('x-request-id'));
    assert.ok(rec.attempts[0].error_message.includes('mockllm'), 'the raw body stays in the receipt');
  }
  const r = await post(); // two failures in a row opened the channel's breaker
  assert.equal(r.status, 503);
  assert.equal((await r.json()).error.code, 'no_upstream_available');
});

test('an upstream 400: the client gets the status with the gateway\'s message, not the provider\'s body', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'm-bad', messages: [{ role: 'user', content: 'hi' }] }),
    (e) => {
      assert.equal(e.status, 400);
      assert.match(e.message, /The upstream model rejected the request \(HTTP 400/);
      assert.ok(!e.message.includes('mockllm'), e.message);
      const rec = record(e.headers.get('x-request-id'));
      assert.ok(rec.attempts[0].error_message.includes('mockllm'));
      assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_UPSTREAM_4XX');
      return true;
    });
});

test('a stream request answered with plain JSON: the client gets the stream, the usage is billed', async () => {
  const { data: stream, response } = await client.chat.completions.create({ model: 'm-json', stream: true,
    stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'hi' }] }).withResponse();
  assert.match(response.headers.get('content-type'), /text\/event-stream/);
  let text = '';
  let usage;
  let finish;
  for await (const ch of stream) {
    if (ch.usage) usage = ch.usage;
    for (const c of ch.choices) {
      text += c.delta.content || '';
      finish = c.finish_reason || finish;
    }
  }
  assert.equal(text, answerText(9));
  assert.equal(finish, 'stop');
  assert.equal(usage.prompt_tokens, 120);
  const rec = record(response.headers.get('x-request-id'));
  assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_PROVIDER');
  assert.equal(Number(rec.usage.output_tokens), 9);
  assert.equal(BigInt(rec.cost_nano), cost(120, 9));

  // tool calls keep their index, as a stream's do
  const tools = [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object' } } }];
  const s2 = await client.chat.completions.create({ model: 'm-json', stream: true, tools,
    messages: [{ role: 'user', content: 'hi' }] });
  const calls = [];
  for await (const ch of s2) for (const c of ch.choices) for (const t of c.delta.tool_calls || []) calls.push(t);
  assert.equal(calls.length, 1);
  assert.equal(calls[0].index, 0);
  assert.equal(calls[0].function.name, 'lookup');

  // Responses: the events the API sends (created, the item, the text as a
  // delta, done events, completed), so the SDK's stream helper and
  // delta-rendering apps work
  const { data: rs, response: r3 } = await client.responses.create({ model: 'm-json', input: 'hi', stream: true })
    .withResponse();
  let final;
  let deltas = '';
  const types = [];
  for await (const ev of rs) {
    types.push(ev.type);
    if (ev.type === 'response.output_text.delta') deltas += ev.delta;
    if (ev.type === 'response.completed') final = ev.response;
  }
  assert.equal(types[0], 'response.created');
  assert.equal(types.at(-1), 'response.completed');
  assert.ok(types.includes('response.output_item.added') && types.includes('response.output_item.done'));
  assert.equal(deltas, answerText(9));
  assert.equal(final.output_text ?? final.output[0].content[0].text, answerText(9));
  assert.equal(BigInt(record(r3.headers.get('x-request-id')).cost_nano), cost(120, 9));
  const helper = await client.responses.stream({ model: 'm-json', input: 'hi' }).finalResponse();
  assert.equal(helper.output_text, answerText(9));
});

test('a stream the upstream cut ends with an error event the SDK raises; billed for what was produced', async () => {
  const { data: stream, response } = await client.chat.completions.create({ model: 'm-cut', stream: true,
    messages: [{ role: 'user', content: 'hi' }] }).withResponse();
  let text = '';
  await assert.rejects((async () => {
    for await (const ch of stream) for (const c of ch.choices) text += c.delta.content || '';
  })(), (e) => /ended the stream before it completed/.test(e.message));
  assert.equal(text, answerText(3));
  const rec = record(response.headers.get('x-request-id'));
  assert.equal(rec.error_class, 'ERROR_CLASS_STREAM_CUT');
  assert.ok(Number(rec.usage.output_tokens) >= 3, `produced text billed: ${rec.usage.output_tokens}`);
  assert.ok(BigInt(rec.cost_nano) > 0n);

  const { data: rs, response: r2 } = await client.responses.create({ model: 'm-cut', input: 'hi', stream: true })
    .withResponse();
  await assert.rejects((async () => { for await (const ev of rs) void ev; })(),
    (e) => /ended the stream before it completed/.test(e.message));
  assert.equal(record(r2.headers.get('x-request-id')).error_class, 'ERROR_CLASS_STREAM_CUT');
});

test('a lone surrogate escape is valid JSON: the answer is served and billed from the provider', async () => {
  const { data, response } = await client.chat.completions.create({ model: 'm-lone',
    messages: [{ role: 'user', content: 'hi' }] }).withResponse();
  assert.equal(data.choices[0].message.content, `${answerText(9)}\ud83d`);
  let rec = record(response.headers.get('x-request-id'));
  assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_PROVIDER');
  assert.equal(BigInt(rec.cost_nano), cost(120, 9));
  // a Responses stream whose closing events carry it: final, no stream-cut error, the provider's usage
  const { data: rs, response: r2 } = await client.responses.create({ model: 'm-lone', input: 'hi', stream: true })
    .withResponse();
  const types = [];
  for await (const ev of rs) types.push(ev.type);
  assert.equal(types.at(-1), 'response.completed');
  rec = record(r2.headers.get('x-request-id'));
  assert.equal(rec.error_class, 'ERROR_CLASS_NONE');
  assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_PROVIDER');
  assert.equal(BigInt(rec.cost_nano), cost(120, 9));
});

test('a Responses stream whose final event does not parse still ends as final: counted locally, flagged', async () => {
  const r = await fetch(`${agent.base}/responses`, { method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm-badfinal', input: 'hi', stream: true }) });
  assert.equal(r.status, 200);
  const text = await r.text();
  const events = text.split('\n\n').filter(Boolean);
  assert.match(events.at(-1), /^event: response\.completed\n/, 'the final event is the last one');
  assert.ok(!text.includes('stream_cut'), 'no stream-cut error after a final event');
  const rec = record(r.headers.get('x-request-id'));
  assert.equal(rec.error_class, 'ERROR_CLASS_NONE');
  assert.equal(rec.usage.provider_usage_invalid, true);
  assert.notEqual(rec.usage.output_source, 'TOKEN_SOURCE_PROVIDER');
  assert.ok(Number(rec.usage.output_tokens) >= 9, `produced text counted: ${rec.usage.output_tokens}`);
});

test('an upstream 3xx is a channel failure: never followed nor passed on; the next tier serves, else 502', async () => {
  const { data, response } = await client.chat.completions.create({ model: 'm-redirect',
    messages: [{ role: 'user', content: 'hi' }] }).withResponse();
  assert.equal(data.choices.length, 1);
  let rec = record(response.headers.get('x-request-id'));
  assert.equal(rec.attempts[0].http_status, 307);
  assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_CHANNEL_REJECTED');
  assert.equal(rec.attempts[0].decision, 'ATTEMPT_DECISION_FALLBACK_TIER');
  assert.equal(rec.attempts[0].error_message,
    'HTTP 307: redirect to http://elsewhere.example/v1/chat/completions not followed');
  assert.equal(rec.channel_id, 'ch-ok');
  const r = await fetch(`${agent.base}/chat/completions`, { method: 'POST', redirect: 'manual',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm-redirect-only', messages: [{ role: 'user', content: 'hi' }] }) });
  assert.equal(r.status, 502);
  assert.equal(r.headers.get('location'), null);
  const body = await r.json();
  assert.equal(body.error.code, 'upstream_channel_rejected');
  assert.match(body.error.message, /redirected the gateway's channel \(HTTP 307\)/);
  rec = record(r.headers.get('x-request-id'));
  assert.match(rec.attempts[0].error_message, /^HTTP 307: redirect to \(no Location\) not followed$/);
});
