// mockllm through the official `openai` Node SDK: what a gateway test relies
// on when it points a client (or the gateway) at the emulator. Usage numbers
// are checked against the documented formula, failures as the SDK reports them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMock, startRefusing, promptTokens, answerText, DEFAULT_TOKENS } from '../../tools/mockllm/mockllm.mjs';

let mock;
let client;
before(async () => {
  mock = await startMock();
  client = new OpenAI({ apiKey: 'sk-test-openai', baseURL: `${mock.url}/v1`, maxRetries: 0, timeout: 10000 });
});
after(async () => { await mock?.stop(); });

const scn = (s) => ({ headers: { 'x-mock-scenario': s } });
const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say hello to the gateway, please.' }];

test('chat completion: text, echoed model, exact usage by the formula, request id header', async () => {
  const body = { model: 'gpt-4o-mini', messages };
  const { data, response } = await client.chat.completions.create(body).withResponse();
  assert.equal(data.object, 'chat.completion');
  assert.equal(data.model, 'gpt-4o-mini');
  assert.match(data.id, /^chatcmpl-/);
  assert.match(response.headers.get('x-request-id'), /^req_/);
  assert.equal(data.choices[0].message.content, answerText(DEFAULT_TOKENS));
  assert.equal(data.choices[0].finish_reason, 'stop');
  const p = promptTokens(body);
  assert.equal(data.usage.prompt_tokens, p);
  assert.equal(data.usage.completion_tokens, DEFAULT_TOKENS);
  assert.equal(data.usage.total_tokens, p + DEFAULT_TOKENS);
  assert.equal(data.usage.prompt_tokens_details.cached_tokens, 0);
});

test('max_tokens cuts the answer: finish_reason length', async () => {
  const r = await client.chat.completions.create({ model: 'gpt-4o', messages, max_completion_tokens: 5 });
  assert.equal(r.choices[0].message.content, answerText(5));
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 5);
});

test('scenario sets tokens, prompt, cached and reasoning tokens', async () => {
  const r = await client.chat.completions.create({ model: 'o3-mini', messages },
    scn('tokens=7;prompt=100;cached=40;reasoning=9'));
  assert.equal(r.choices[0].message.content, answerText(7));
  assert.equal(r.usage.prompt_tokens, 100);
  assert.equal(r.usage.prompt_tokens_details.cached_tokens, 40);
  assert.equal(r.usage.completion_tokens_details.reasoning_tokens, 9);
  assert.equal(r.usage.completion_tokens, 7 + 9);
  assert.equal(r.usage.total_tokens, 100 + 16);
});

test('n=3 returns three choices and bills each', async () => {
  const r = await client.chat.completions.create({ model: 'gpt-4o', messages, n: 3 }, scn('tokens=4'));
  assert.equal(r.choices.length, 3);
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
  assert.equal(r.usage.completion_tokens, 12);
});

test('streaming with include_usage: deltas add up, one final usage chunk', async () => {
  const body = { model: 'gpt-4o-mini', messages, stream: true, stream_options: { include_usage: true } };
  const stream = await client.chat.completions.create(body, scn('tokens=6'));
  let text = '';
  const usages = [];
  let finish = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    assert.equal(chunk.model, 'gpt-4o-mini');
    if (chunk.usage) usages.push(chunk.usage);
    for (const c of chunk.choices) {
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, answerText(6));
  assert.equal(finish, 'stop');
  assert.equal(usages.length, 1);
  assert.equal(usages[0].prompt_tokens, promptTokens(body));
  assert.equal(usages[0].completion_tokens, 6);
});

test('streaming without include_usage sends no usage', async () => {
  const stream = await client.chat.completions.create({ model: 'm', messages, stream: true });
  let chunks = 0;
  for await (const chunk of stream) { chunks++; assert.equal(chunk.usage ?? null, null); }
  assert.equal(chunks, 1 + DEFAULT_TOKENS + 1);
});

test('tool call, non-streaming and streaming', async () => {
  const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { q: { type: 'string' } } } } }];
  const r = await client.chat.completions.create({ model: 'gpt-4o', messages, tools });
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  const call = r.choices[0].message.tool_calls[0];
  assert.equal(call.type, 'function');
  assert.equal(call.function.name, 'get_weather');
  assert.deepEqual(JSON.parse(call.function.arguments), { q: 'mock' });

  const stream = await client.chat.completions.create({ model: 'gpt-4o', messages, tools, stream: true });
  let name = '';
  let args = '';
  let finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      for (const tc of c.delta.tool_calls ?? []) { name += tc.function?.name ?? ''; args += tc.function?.arguments ?? ''; }
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(name, 'get_weather');
  assert.deepEqual(JSON.parse(args), { q: 'mock' });
  assert.equal(finish, 'tool_calls');
});

test('tool_choice none or no-tool scenario answers with text', async () => {
  const tools = [{ type: 'function', function: { name: 'f', parameters: {} } }];
  const r = await client.chat.completions.create({ model: 'gpt-4o', messages, tools, tool_choice: 'none' });
  assert.equal(r.choices[0].message.content, answerText(DEFAULT_TOKENS));
  const r2 = await client.chat.completions.create({ model: 'gpt-4o', messages, tools }, scn('no-tool'));
  assert.equal(r2.choices[0].finish_reason, 'stop');
});

test('embeddings: SDK default (base64) and float, usage by the formula', async () => {
  const input = ['first text', 'second, longer text'];
  const r = await client.embeddings.create({ model: 'text-embedding-3-small', input });
  assert.equal(r.data.length, 2);
  assert.equal(r.data[0].embedding.length, 8);
  const expect0 = Array.from({ length: 8 }, (_, k) => Math.fround(Math.fround(((0 * 31 + k * 7) % 100) / 100) - 0.5));
  assert.deepEqual(Array.from(r.data[0].embedding), expect0);
  assert.equal(r.usage.prompt_tokens, promptTokens({ input }));
  const f = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'x', encoding_format: 'float', dimensions: 4 });
  assert.equal(f.data.length, 1);
  assert.equal(f.data[0].embedding.length, 4);
  assert.ok(f.data[0].embedding.every((v) => typeof v === 'number'));
});

test('models list', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes('gpt-4o-mini'));
  assert.ok(ids.includes('claude-sonnet-4-5'));
});

test('responses API: JSON and the streaming event sequence', async () => {
  const body = { model: 'gpt-4o', input: 'Write one line.', instructions: 'Be brief.' };
  const r = await client.responses.create(body, scn('tokens=5;reasoning=2'));
  assert.equal(r.status, 'completed');
  assert.equal(r.output_text, answerText(5));
  assert.equal(r.usage.input_tokens, promptTokens(body));
  assert.equal(r.usage.output_tokens, 7);
  assert.equal(r.usage.output_tokens_details.reasoning_tokens, 2);

  const stream = await client.responses.create({ ...body, stream: true }, scn('tokens=3'));
  const types = [];
  let text = '';
  let final;
  for await (const ev of stream) {
    types.push(ev.type);
    if (ev.type === 'response.output_text.delta') text += ev.delta;
    if (ev.type === 'response.completed') final = ev.response;
  }
  assert.deepEqual(types, ['response.created', 'response.in_progress', 'response.output_item.added',
    'response.content_part.added', 'response.output_text.delta', 'response.output_text.delta',
    'response.output_text.delta', 'response.output_text.done', 'response.content_part.done',
    'response.output_item.done', 'response.completed']);
  assert.equal(text, answerText(3));
  assert.equal(final.usage.output_tokens, 3);
});

test('responses API function call', async () => {
  const r = await client.responses.create({ model: 'gpt-4o', input: 'weather?', tools: [{ type: 'function', name: 'lookup', parameters: {} }] });
  assert.equal(r.output[0].type, 'function_call');
  assert.equal(r.output[0].name, 'lookup');
  assert.deepEqual(JSON.parse(r.output[0].arguments), { q: 'mock' });
});

test('images: b64_json and url', async () => {
  const r = await client.images.generate({ model: 'gpt-image-1', prompt: 'a cat', n: 2, response_format: 'b64_json' });
  assert.equal(r.data.length, 2);
  assert.equal(Buffer.from(r.data[0].b64_json, 'base64').subarray(1, 4).toString(), 'PNG');
  const u = await client.images.generate({ model: 'dall-e-3', prompt: 'a cat' });
  assert.match(u.data[0].url, /^http:\/\/mockllm\.invalid\//);
});

test('scripted HTTP errors arrive as the SDK error classes with OpenAI error JSON', async () => {
  const cases = [
    ['status=429;retry-after=1', OpenAI.RateLimitError, 429, 'rate_limit_exceeded'],
    ['status=500', OpenAI.InternalServerError, 500, null],
    ['status=503', OpenAI.InternalServerError, 503, 'service_unavailable'],
    ['status=400', OpenAI.BadRequestError, 400, null],
  ];
  for (const [s, cls, status, code] of cases) {
    await assert.rejects(client.chat.completions.create({ model: 'm', messages }, scn(s)), (e) => {
      assert.ok(e instanceof cls, `${s}: ${e}`);
      assert.equal(e.status, status);
      assert.equal(e.code ?? null, code);
      assert.match(e.message, /scripted failure/);
      if (status === 429) assert.equal(e.headers.get('retry-after'), '1');
      return true;
    });
  }
});

test('a bad request body gets a 400 invalid_request_error', async () => {
  const r = await fetch(`${mock.url}/v1/chat/completions`, {
    method: 'POST', headers: { authorization: 'Bearer k', 'content-type': 'application/json' }, body: '{"model": "m", "messages": [',
  });
  assert.equal(r.status, 400);
  const j = await r.json();
  assert.equal(j.error.type, 'invalid_request_error');
  assert.match(j.error.message, /not a JSON object/);
  const r2 = await fetch(`${mock.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: 'Bearer k' }, body: '{"messages":[]}' });
  assert.equal(r2.status, 400);
  assert.match((await r2.json()).error.message, /model/);
});

test('hang: the SDK timeout fires (maxRetries 0)', async () => {
  const t0 = Date.now();
  await assert.rejects(
    client.chat.completions.create({ model: 'm', messages }, { ...scn('hang'), timeout: 300, maxRetries: 0 }),
    (e) => e instanceof OpenAI.APIConnectionTimeoutError);
  const dt = Date.now() - t0;
  assert.ok(dt >= 250 && dt < 5000, `timed out after ${dt} ms`);
});

test('latency and TTFT delay the answer by the scripted time', async () => {
  let t0 = Date.now();
  await client.chat.completions.create({ model: 'm', messages }, scn('latency=150;tokens=1'));
  assert.ok(Date.now() - t0 >= 140, 'latency');
  t0 = Date.now();
  const stream = await client.chat.completions.create({ model: 'm', messages, stream: true }, scn('ttft=200;itl=20;tokens=3'));
  let first = 0;
  for await (const chunk of stream) if (!first && chunk.choices[0]?.delta?.content) first = Date.now() - t0;
  const total = Date.now() - t0;
  assert.ok(first >= 190, `ttft ${first}`);
  assert.ok(total >= 230, `total ${total}`);
});

test('disconnect mid-stream: the SDK raises after the tokens that arrived', async () => {
  const stream = await client.chat.completions.create({ model: 'm', messages, stream: true }, scn('tokens=10;disconnect=3'));
  let text = '';
  await assert.rejects((async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  })());
  assert.equal(text, answerText(3));
  // A JSON answer cut short of its Content-Length fails too.
  await assert.rejects(client.chat.completions.create({ model: 'm', messages }, scn('disconnect')));
});

test('error-after=K: an in-stream error event is raised by the SDK as an APIError', async () => {
  const stream = await client.chat.completions.create({ model: 'm', messages, stream: true }, scn('tokens=10;error-after=2'));
  let text = '';
  await assert.rejects((async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  })(), (e) => e instanceof OpenAI.APIError && /middle of the stream/.test(e.message));
  assert.equal(text, answerText(2));

  const rs = await client.responses.create({ model: 'm', input: 'x', stream: true }, scn('tokens=10;error-after=1'));
  const types = [];
  for await (const ev of rs) types.push(ev.type);
  assert.deepEqual(types.slice(-2), ['response.output_text.delta', 'error']);
});

test('malformed JSON answers make the SDK fail, streaming and not', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'm', messages }, scn('malformed')));
  const stream = await client.chat.completions.create({ model: 'm', messages, stream: true }, scn('malformed'));
  await assert.rejects((async () => { for await (const _ of stream) { /* drain */ } })());
});

test('no-usage leaves usage out', async () => {
  const r = await client.chat.completions.create({ model: 'm', messages }, scn('no-usage'));
  assert.equal(r.usage, undefined);
  const stream = await client.chat.completions.create({ model: 'm', messages, stream: true, stream_options: { include_usage: true } }, scn('no-usage'));
  for await (const chunk of stream) assert.equal(chunk.usage ?? null, null);
});

test('zero-usage reports explicit zeros; running-usage puts running totals on every chunk', async () => {
  const z = await client.chat.completions.create({ model: 'm', messages }, scn('zero-usage;tokens=4'));
  assert.equal(z.choices[0].message.content, answerText(4));
  assert.equal(z.usage.prompt_tokens, 0);
  assert.equal(z.usage.completion_tokens, 0);
  const stream = await client.chat.completions.create({ model: 'm', messages, stream: true }, scn('running-usage;tokens=4;prompt=9'));
  const seen = [];
  for await (const chunk of stream) seen.push(chunk.usage.completion_tokens);
  assert.deepEqual(seen, [0, 1, 2, 3, 4, 4]); // role chunk, 4 tokens, finish: the last one is the total
});

test('fail-first=K: the SDK retries through K failures (per key, no cross-talk)', async () => {
  const retrying = new OpenAI({ apiKey: 'k', baseURL: `${mock.url}/v1`, maxRetries: 3 });
  const r = await retrying.chat.completions.create({ model: 'm', messages }, scn('fail-first=2;status=503;retry-after-ms=10;key=retry-a'));
  assert.equal(r.choices[0].message.content, answerText(DEFAULT_TOKENS));
  const rec = await mock.requests('retry-a');
  assert.equal(rec.count, 3);
  assert.deepEqual(rec.requests.map((x) => x.ordinal), [1, 2, 3]);

  const once = new OpenAI({ apiKey: 'k', baseURL: `${mock.url}/v1`, maxRetries: 1 });
  await assert.rejects(once.chat.completions.create({ model: 'm', messages }, scn('fail-first=2;status=429;retry-after-ms=10;key=retry-b')),
    (e) => e.status === 429);
  assert.equal((await mock.requests('retry-b')).count, 2);
});

test('recorded requests show what reached the upstream, and DELETE resets them', async () => {
  await client.chat.completions.create({ model: 'rec-model', messages, stream: true, stream_options: { include_usage: true } }, scn('key=rec1'));
  const rec = await mock.requests('rec1');
  assert.equal(rec.count, 1);
  const r = rec.requests[0];
  assert.equal(r.method, 'POST');
  assert.equal(r.path, '/v1/chat/completions');
  assert.equal(r.headers.authorization, 'Bearer sk-test-openai');
  assert.match(r.headers['content-type'], /application\/json/);
  const sent = JSON.parse(r.body);
  assert.equal(sent.model, 'rec-model');
  assert.deepEqual(sent.stream_options, { include_usage: true });
  await mock.reset('rec1');
  assert.deepEqual(await mock.requests('rec1'), { count: 0, requests: [] });
});

test('--api-key: a wrong key is a 401 AuthenticationError', async () => {
  const strict = await startMock(['--api-key', 'right']);
  try {
    const bad = new OpenAI({ apiKey: 'wrong', baseURL: `${strict.url}/v1`, maxRetries: 0 });
    await assert.rejects(bad.chat.completions.create({ model: 'm', messages }), (e) => e instanceof OpenAI.AuthenticationError && e.code === 'invalid_api_key');
    const good = new OpenAI({ apiKey: 'right', baseURL: `${strict.url}/v1`, maxRetries: 0 });
    assert.equal((await good.chat.completions.create({ model: 'm', messages })).object, 'chat.completion');
  } finally { await strict.stop(); }
});

test('connect refusal: a bound port that refuses is an APIConnectionError', async () => {
  const closed = await startRefusing();
  try {
    const c = new OpenAI({ apiKey: 'k', baseURL: `${closed.url}/v1`, maxRetries: 0 });
    await assert.rejects(c.chat.completions.create({ model: 'm', messages }), (e) => e instanceof OpenAI.APIConnectionError);
  } finally { await closed.stop(); }
});

test('listener-wide scenario flag applies to every request', async () => {
  const slow = await startMock(['--scenario', 'tokens=2;prompt=11']);
  try {
    const c = new OpenAI({ apiKey: 'k', baseURL: `${slow.url}/v1`, maxRetries: 0 });
    const r = await c.chat.completions.create({ model: 'm', messages });
    assert.equal(r.usage.prompt_tokens, 11);
    assert.equal(r.usage.completion_tokens, 2);
  } finally { await slow.stop(); }
});

test('--model-scenario scripts one mockllm per upstream model (fallback tests), the header still wins', async () => {
  const m = await startMock(['--scenario', 'tokens=3', '--model-scenario', 'gpt-down=status=503', '--model-scenario', 'gpt-short=tokens=1']);
  try {
    const c = new OpenAI({ apiKey: 'k', baseURL: `${m.url}/v1`, maxRetries: 0 });
    await assert.rejects(c.chat.completions.create({ model: 'gpt-down', messages }), (e) => e.status === 503);
    assert.equal((await c.chat.completions.create({ model: 'gpt-up', messages })).usage.completion_tokens, 3);
    assert.equal((await c.chat.completions.create({ model: 'gpt-short', messages })).usage.completion_tokens, 1);
    const r = await c.chat.completions.create({ model: 'gpt-down', messages }, scn('status=0'));
    assert.equal(r.usage.completion_tokens, 3, 'model scenario builds on --scenario');
  } finally { await m.stop(); }
});

test('SIGTERM stops mockllm cleanly, even with hung and streaming connections open', async () => {
  const m = await startMock();
  const c = new OpenAI({ apiKey: 'k', baseURL: `${m.url}/v1`, maxRetries: 0 });
  const hung = c.chat.completions.create({ model: 'm', messages }, scn('hang')).catch((e) => e);
  const stream = await c.chat.completions.create({ model: 'm', messages, stream: true }, scn('tokens=100;itl=50'));
  const it = stream[Symbol.asyncIterator]();
  await it.next();
  await new Promise((r) => setTimeout(r, 100));
  const r = await m.stop();
  assert.equal(r.code, 0, m.proc.output());
  assert.ok((await hung) instanceof Error);
});
