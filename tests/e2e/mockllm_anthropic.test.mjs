// mockllm through the official `@anthropic-ai/sdk` Node client: messages
// (JSON and the SSE event sequence), cache usage, tool_use, count_tokens and
// the failure scenarios as the SDK reports them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { startMock, promptTokens, answerText, DEFAULT_TOKENS } from '../../tools/mockllm/mockllm.mjs';

let mock;
let client;
before(async () => {
  mock = await startMock();
  client = new Anthropic({ apiKey: 'sk-ant-test', baseURL: mock.url, maxRetries: 0, timeout: 10000 });
});
after(async () => { await mock?.stop(); });

const scn = (s) => ({ headers: { 'x-mock-scenario': s } });
const base = { model: 'claude-sonnet-4-5', max_tokens: 100, system: 'Be terse.', messages: [{ role: 'user', content: 'Hello there, model.' }] };

test('message: text, echoed model, exact usage by the formula', async () => {
  const { data, response } = await client.messages.create(base).withResponse();
  assert.equal(data.type, 'message');
  assert.equal(data.role, 'assistant');
  assert.equal(data.model, 'claude-sonnet-4-5');
  assert.match(data.id, /^msg_/);
  assert.match(response.headers.get('request-id'), /^req_/);
  assert.deepEqual(data.content, [{ type: 'text', text: answerText(DEFAULT_TOKENS) }]);
  assert.equal(data.stop_reason, 'end_turn');
  assert.equal(data.usage.input_tokens, promptTokens(base));
  assert.equal(data.usage.output_tokens, DEFAULT_TOKENS);
  assert.equal(data.usage.cache_read_input_tokens, 0);
  assert.equal(data.usage.cache_creation_input_tokens, 0);
});

test('max_tokens below the answer: stop_reason max_tokens', async () => {
  const r = await client.messages.create({ ...base, max_tokens: 3 });
  assert.equal(r.content[0].text, answerText(3));
  assert.equal(r.stop_reason, 'max_tokens');
  assert.equal(r.usage.output_tokens, 3);
});

test('cache reads and writes are reported apart from input_tokens', async () => {
  const r = await client.messages.create(base, scn('prompt=50;cached=30;cache_write=12;reasoning=5;tokens=4'));
  assert.equal(r.usage.input_tokens, 8);
  assert.equal(r.usage.cache_read_input_tokens, 30);
  assert.equal(r.usage.cache_creation_input_tokens, 12);
  assert.equal(r.usage.output_tokens, 9);
});

test('zero-usage: explicit zeros in the message and the stream', async () => {
  const r = await client.messages.create(base, scn('zero-usage'));
  assert.equal(r.content[0].text, answerText(DEFAULT_TOKENS));
  assert.deepEqual([r.usage.input_tokens, r.usage.output_tokens, r.usage.cache_read_input_tokens], [0, 0, 0]);
  const msg = await client.messages.stream(base, scn('zero-usage')).finalMessage();
  assert.equal(msg.usage.output_tokens, 0);
  assert.equal(msg.usage.input_tokens, 0);
});

test('SDK sends Bearer auth and its anthropic-version; both are recorded', async () => {
  await client.messages.create(base, scn('key=anth-hdr'));
  const rec = await mock.requests('anth-hdr');
  assert.equal(rec.count, 1);
  const h = rec.requests[0].headers;
  assert.ok(h.authorization === 'Bearer sk-ant-test' || h['x-api-key'] === 'sk-ant-test', JSON.stringify(h));
  assert.ok(h['anthropic-version'], 'anthropic-version sent');
  assert.equal(JSON.parse(rec.requests[0].body).model, 'claude-sonnet-4-5');
});

test('x-api-key is accepted too; a missing anthropic-version is a 400 in Anthropic shape', async () => {
  const ok = await fetch(`${mock.url}/v1/messages`, {
    method: 'POST', headers: { 'x-api-key': 'k', 'anthropic-version': '2023-06-01', 'content-type': 'application/json' }, body: JSON.stringify(base),
  });
  assert.equal(ok.status, 200);
  assert.equal((await ok.json()).type, 'message');
  const bad = await fetch(`${mock.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': 'k' }, body: JSON.stringify(base) });
  assert.equal(bad.status, 400);
  const j = await bad.json();
  assert.equal(j.type, 'error');
  assert.equal(j.error.type, 'invalid_request_error');
  assert.match(j.error.message, /anthropic-version/);
  const noauth = await fetch(`${mock.url}/v1/messages`, { method: 'POST', headers: { 'anthropic-version': '2023-06-01' }, body: JSON.stringify(base) });
  assert.equal(noauth.status, 401);
  assert.equal((await noauth.json()).error.type, 'authentication_error');
});

test('stream: the exact event sequence, usage in message_start and message_delta', async () => {
  const stream = await client.messages.create({ ...base, stream: true }, scn('tokens=3;cached=2'));
  const types = [];
  let text = '';
  let start;
  let delta;
  for await (const ev of stream) {
    types.push(ev.type);
    if (ev.type === 'message_start') start = ev.message;
    if (ev.type === 'content_block_delta') text += ev.delta.text;
    if (ev.type === 'message_delta') delta = ev;
  }
  assert.deepEqual(types, ['message_start', 'content_block_start', 'content_block_delta', 'content_block_delta',
    'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop']);
  assert.equal(text, answerText(3));
  assert.equal(start.model, 'claude-sonnet-4-5');
  assert.equal(start.usage.input_tokens, promptTokens(base) - 2);
  assert.equal(start.usage.cache_read_input_tokens, 2);
  assert.equal(delta.delta.stop_reason, 'end_turn');
  assert.equal(delta.usage.output_tokens, 3);
});

test('messages.stream helper: finalMessage has text and usage', async () => {
  const s = client.messages.stream(base, scn('tokens=5;itl=2'));
  const msg = await s.finalMessage();
  assert.equal(msg.content[0].text, answerText(5));
  assert.equal(msg.usage.output_tokens, 5);
  assert.equal(msg.usage.input_tokens, promptTokens(base));
});

test('reasoning=R: a thinking block (with signature) before the answer, JSON and streamed', async () => {
  const r = await client.messages.create(base, scn('reasoning=3;tokens=2'));
  assert.equal(r.content[0].type, 'thinking');
  assert.equal(r.content[0].thinking, answerText(3));
  assert.match(r.content[0].signature, /^mocksig_/);
  assert.deepEqual(r.content[1], { type: 'text', text: answerText(2) });
  assert.equal(r.usage.output_tokens, 5);
  const s = client.messages.stream(base, scn('reasoning=3;tokens=2'));
  const deltas = [];
  s.on('streamEvent', (ev) => { if (ev.type === 'content_block_delta') deltas.push(`${ev.index}:${ev.delta.type}`); });
  const msg = await s.finalMessage();
  assert.deepEqual(deltas, ['0:thinking_delta', '0:thinking_delta', '0:thinking_delta', '0:signature_delta', '1:text_delta', '1:text_delta']);
  assert.equal(msg.content[0].thinking, answerText(3));
  assert.equal(msg.content[0].signature, `mocksig_${msg.id.slice('msg_'.length)}`);
  assert.equal(msg.content[1].text, answerText(2));
  assert.equal(msg.usage.output_tokens, 5);
});

test('tool_use: JSON and streamed input_json_delta', async () => {
  const tools = [{ name: 'get_weather', description: 'Weather', input_schema: { type: 'object', properties: { q: { type: 'string' } } } }];
  const r = await client.messages.create({ ...base, tools });
  assert.equal(r.stop_reason, 'tool_use');
  assert.equal(r.content[0].type, 'tool_use');
  assert.equal(r.content[0].name, 'get_weather');
  assert.deepEqual(r.content[0].input, { q: 'mock' });
  const msg = await client.messages.stream({ ...base, tools }).finalMessage();
  assert.equal(msg.stop_reason, 'tool_use');
  assert.deepEqual(msg.content[0].input, { q: 'mock' });
});

test('count_tokens returns the formula', async () => {
  const r = await client.messages.countTokens({ model: base.model, system: base.system, messages: base.messages });
  assert.equal(r.input_tokens, promptTokens(base));
});

test('models list in Anthropic shape', async () => {
  const ids = [];
  for await (const m of client.models.list()) { ids.push(m.id); assert.equal(m.type, 'model'); }
  assert.ok(ids.includes('claude-haiku-4-5'));
});

test('scripted errors arrive as the SDK error classes with Anthropic error JSON', async () => {
  const cases = [
    ['status=429;retry-after=2', Anthropic.RateLimitError, 429, 'rate_limit_error'],
    ['status=500', Anthropic.InternalServerError, 500, 'api_error'],
    ['status=529', Anthropic.InternalServerError, 529, 'overloaded_error'],
    ['status=400', Anthropic.BadRequestError, 400, 'invalid_request_error'],
  ];
  for (const [s, cls, status, type] of cases) {
    await assert.rejects(client.messages.create(base, scn(s)), (e) => {
      assert.ok(e instanceof cls, `${s}: ${e}`);
      assert.equal(e.status, status);
      assert.equal(e.error.type, 'error');
      assert.equal(e.error.error.type, type);
      if (status === 429) assert.equal(e.headers.get('retry-after'), '2');
      return true;
    });
  }
});

test('hang: the SDK timeout fires', async () => {
  await assert.rejects(client.messages.create(base, { ...scn('hang'), timeout: 300, maxRetries: 0 }),
    (e) => e instanceof Anthropic.APIConnectionTimeoutError);
});

test('disconnect mid-stream raises after the delivered text', async () => {
  const stream = await client.messages.create({ ...base, stream: true }, scn('tokens=8;disconnect=2'));
  let text = '';
  await assert.rejects((async () => {
    for await (const ev of stream) if (ev.type === 'content_block_delta') text += ev.delta.text;
  })());
  assert.equal(text, answerText(2));
});

test('error-after=K: an overloaded_error event mid-stream is raised by the SDK', async () => {
  const stream = await client.messages.create({ ...base, stream: true }, scn('tokens=8;error-after=3'));
  let text = '';
  await assert.rejects((async () => {
    for await (const ev of stream) if (ev.type === 'content_block_delta') text += ev.delta.text;
  })(), (e) => e instanceof Anthropic.APIError && e.error?.error?.type === 'overloaded_error');
  assert.equal(text, answerText(3));
});

test('fail-first=K with the SDK own retries', async () => {
  const retrying = new Anthropic({ apiKey: 'k', baseURL: mock.url, maxRetries: 2 });
  const r = await retrying.messages.create(base, scn('fail-first=2;status=529;retry-after-ms=5;key=anth-retry'));
  assert.equal(r.content[0].text, answerText(DEFAULT_TOKENS));
  assert.equal((await mock.requests('anth-retry')).count, 3);
});
