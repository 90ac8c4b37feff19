// tollgate-agent serving the Responses API on a channel that speaks only
// chat completions (PROVIDER_TYPE_OPENAI_COMPATIBLE: DeepSeek, Qwen, Kimi,
// GLM...), through the official `openai` SDK against mockllm: JSON, the
// event stream (iterated, and the SDK's finalResponse), a function tool
// round trip, the upstream receiving a chat completions request, the
// receipt billing the chat usage, max_output_tokens ending in
// response.incomplete, and stateful requests refused with a clear 400.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMock, answerText, DEFAULT_TOKENS } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';

const KEY = 'sk-tg-resp-main';
let mock;
let agent;
let client;

function snapshot() {
  const chan = (id, provider, more = {}) => ({
    id, name: id, provider, base_url: `${mock.url}/v1`, credential: `sk-upstream-${id}`,
    route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE', first_byte_timeout_ms: 5000, ...more,
  });
  const one = (model, channel_id, upstream_model) => ({ model, tiers: [{ targets: [{ channel_id, upstream_model }] }] });
  return {
    revision: '1',
    accounts: [{ id: 'acct-main', name: 'main', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
    balances: [{ account_id: 'acct-main', bucket: 'credit', currency: 'USD', balance_nano: '100000000000' }],
    keys: [{ id: 'k-main', account_id: 'acct-main', secret_sha256: keyHash(KEY), display_prefix: KEY.slice(0, 9),
      status: 'KEY_STATUS_ACTIVE', expose_cost: true }],
    channels: [
      chan('ch-deepseek', 'PROVIDER_TYPE_OPENAI_COMPATIBLE'),
      chan('ch-cached', 'PROVIDER_TYPE_OPENAI_COMPATIBLE', { extra_headers: [{ name: 'x-mock-scenario', value: 'prompt=50;cached=30;tokens=4' }] }),
      chan('ch-long', 'PROVIDER_TYPE_OPENAI_COMPATIBLE', { extra_headers: [{ name: 'x-mock-scenario', value: 'tokens=60' }] }),
      chan('ch-openai', 'PROVIDER_TYPE_OPENAI'),
    ],
    routes: [
      one('deepseek-chat', 'ch-deepseek', 'deepseek-v3'),
      one('deepseek-cached', 'ch-cached', 'deepseek-v3'),
      one('deepseek-long', 'ch-long', 'deepseek-v3'),
      one('gpt-5', 'ch-openai', 'gpt-5-2025'),
    ],
    price_cards: [{
      id: 'card', version: '1', effective_at_us: '1', currency: 'USD',
      entries: [{ model: '*', input_per_mtok_nano: '1000000000', output_per_mtok_nano: '2000000000',
        cache_read_per_mtok_nano: '100000000' }],
    }],
  };
}

before(async () => {
  mock = await startMock();
  agent = await startAgent(snapshot());
  client = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0, timeout: 15000 });
});
after(async () => {
  await agent?.stop();
  await mock?.stop();
});

async function lastUpstream() {
  const r = await mock.requests();
  return r.requests[r.requests.length - 1];
}

const weather = {
  type: 'function', name: 'get_weather', description: 'Weather of a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
};

test('JSON: a Responses answer out of a chat completions channel, the receipt bills the chat usage', async () => {
  const { data, response } = await client.responses.create({
    model: 'deepseek-chat', instructions: 'Be terse.', input: 'Hello there, model.', max_output_tokens: 100,
  }).withResponse();
  assert.equal(data.object, 'response');
  assert.match(data.id, /^resp_/);
  assert.equal(data.status, 'completed');
  assert.equal(data.output_text, answerText(DEFAULT_TOKENS));
  assert.equal(data.output[0].type, 'message');
  assert.equal(data.output[0].content[0].type, 'output_text');
  assert.equal(data.usage.output_tokens, DEFAULT_TOKENS);
  assert.equal(data.usage.total_tokens, data.usage.input_tokens + DEFAULT_TOKENS);
  const up = await lastUpstream();
  assert.equal(up.path, '/v1/chat/completions');
  assert.equal(up.headers.authorization, 'Bearer sk-upstream-ch-deepseek');
  const sent = JSON.parse(up.body);
  assert.equal(sent.model, 'deepseek-v3');
  assert.equal(sent.max_tokens, 100);
  assert.deepEqual(sent.messages, [{ role: 'system', content: 'Be terse.' }, { role: 'user', content: 'Hello there, model.' }]);
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(rec.endpoint, '/v1/responses');
  assert.equal(rec.client_protocol, 'CLIENT_PROTOCOL_OPENAI');
  assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_PROVIDER');
  assert.equal(Number(rec.usage.output_tokens), DEFAULT_TOKENS);
  assert.equal(Number(rec.usage.input_tokens), data.usage.input_tokens);
  assert.equal(JSON.parse(rec.usage.raw_provider_usage).completion_tokens, DEFAULT_TOKENS);
  assert.ok(BigInt(rec.cost_nano) > 0n);
});

test('JSON: cached prompt tokens in input_tokens_details, billed once', async () => {
  const { data, response } = await client.responses.create({ model: 'deepseek-cached', input: 'Hi.' }).withResponse();
  assert.equal(data.usage.input_tokens, 50);
  assert.equal(data.usage.input_tokens_details.cached_tokens, 30);
  assert.equal(data.usage.output_tokens, 4);
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(Number(rec.usage.cache_read_tokens), 30);
  assert.equal(Number(rec.usage.input_tokens), 20);
});

test('stream: iterated events follow the Responses grammar', async () => {
  const stream = await client.responses.create({ model: 'deepseek-chat', input: 'Hello there.', stream: true });
  const types = [];
  let text = '';
  let last = -1;
  let done;
  for await (const ev of stream) {
    types.push(ev.type);
    assert.ok(ev.sequence_number > last, 'sequence_number increases');
    last = ev.sequence_number;
    if (ev.type === 'response.output_text.delta') text += ev.delta;
    if (ev.type === 'response.completed') done = ev.response;
  }
  assert.equal(types[0], 'response.created');
  assert.equal(types[1], 'response.in_progress');
  for (const t of ['response.output_item.added', 'response.content_part.added', 'response.output_text.done',
    'response.content_part.done', 'response.output_item.done']) assert.ok(types.includes(t), t);
  assert.equal(types[types.length - 1], 'response.completed');
  assert.equal(text, answerText(DEFAULT_TOKENS));
  assert.equal(done.status, 'completed');
  assert.equal(done.output[0].content[0].text, text);
  assert.equal(done.usage.output_tokens, DEFAULT_TOKENS);
  const sent = JSON.parse((await lastUpstream()).body);
  assert.equal(sent.stream, true);
  assert.ok(sent.messages, 'a chat completions request upstream');
});

test('stream: client.responses.stream(...).finalResponse()', async () => {
  const s = client.responses.stream({ model: 'deepseek-chat', input: 'Hello there.' });
  let text = '';
  s.on('response.output_text.delta', (e) => { text += e.delta; });
  const r = await s.finalResponse();
  assert.equal(text, answerText(DEFAULT_TOKENS));
  assert.equal(r.output_text, text);
  assert.equal(r.status, 'completed');
  assert.equal(r.usage.output_tokens, DEFAULT_TOKENS);
});

test('a function tool round trip, JSON and streamed', async () => {
  const r = await client.responses.create({ model: 'deepseek-chat', input: 'Weather in Paris?', tools: [weather], tool_choice: 'required' });
  const call = r.output.find((o) => o.type === 'function_call');
  assert.equal(call.name, 'get_weather');
  assert.deepEqual(JSON.parse(call.arguments), { q: 'mock' });
  assert.ok(call.call_id);
  let sent = JSON.parse((await lastUpstream()).body);
  assert.equal(sent.tool_choice, 'required');
  assert.equal(sent.tools[0].function.name, 'get_weather');
  // the answer goes back with the call: a stateless follow-up
  const input = [
    { role: 'user', content: 'Weather in Paris?' },
    { type: 'function_call', call_id: call.call_id, name: call.name, arguments: call.arguments },
    { type: 'function_call_output', call_id: call.call_id, output: '18C and cloudy' },
  ];
  const r2 = await client.responses.create({ model: 'deepseek-chat', input, tools: [weather], tool_choice: 'none' });
  assert.equal(r2.output_text, answerText(DEFAULT_TOKENS));
  sent = JSON.parse((await lastUpstream()).body);
  assert.equal(sent.messages[1].role, 'assistant');
  assert.equal(sent.messages[1].tool_calls[0].id, call.call_id);
  assert.deepEqual(sent.messages[2], { role: 'tool', tool_call_id: call.call_id, content: '18C and cloudy' });
  // streamed: function_call_arguments events, the final response holds the call
  const s = client.responses.stream({ model: 'deepseek-chat', input: 'Weather in Paris?', tools: [weather] });
  let args = '';
  s.on('response.function_call_arguments.delta', (e) => { args += e.delta; });
  const fr = await s.finalResponse();
  const fc = fr.output.find((o) => o.type === 'function_call');
  assert.equal(fc.name, 'get_weather');
  assert.equal(fc.arguments, args);
  assert.deepEqual(JSON.parse(args), { q: 'mock' });
});

test('max_output_tokens: the answer is incomplete (JSON and stream)', async () => {
  const r = await client.responses.create({ model: 'deepseek-long', input: 'Talk a lot.', max_output_tokens: 5 });
  assert.equal(r.status, 'incomplete');
  assert.equal(r.incomplete_details.reason, 'max_output_tokens');
  const types = [];
  let fin;
  for await (const ev of await client.responses.create({ model: 'deepseek-long', input: 'Talk a lot.', max_output_tokens: 5, stream: true })) {
    types.push(ev.type);
    if (ev.type === 'response.incomplete') fin = ev.response;
  }
  assert.equal(types[types.length - 1], 'response.incomplete');
  assert.equal(fin.incomplete_details.reason, 'max_output_tokens');
});

test('stateless only: previous_response_id and non-function tools get a 400 in OpenAI shape', async () => {
  await assert.rejects(
    client.responses.create({ model: 'deepseek-chat', input: 'And then?', previous_response_id: 'resp_123' }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && /previous_response_id/.test(e.message) &&
      e.error?.type === 'invalid_request_error');
  await assert.rejects(
    client.responses.create({ model: 'deepseek-chat', input: 'Search.', tools: [{ type: 'web_search_preview' }] }),
    (e) => e.status === 400 && /web_search_preview/.test(e.message));
});

test('an OpenAI channel still gets the Responses request itself (passthrough)', async () => {
  const r = await client.responses.create({ model: 'gpt-5', input: 'Hello there.' });
  assert.equal(r.output_text, answerText(DEFAULT_TOKENS));
  const up = await lastUpstream();
  assert.equal(up.path, '/v1/responses');
});
