// The OpenAI passthrough endpoints of tollgate-agent (embeddings, responses
// JSON and streaming, images) through the official `openai` Node SDK, with
// mockllm as the upstream: the answers, the model rewrite and the channel
// credential as the upstream saw them, fallback before the first byte, the
// exact usage of mockllm's token formula and its cost in the spooled
// UsageRecord, local counts when the provider reports none, and the OpenAI
// error for a model only Anthropic-type channels serve.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { get_encoding } from 'tiktoken';
import { startMock, promptTokens, answerText, DEFAULT_TOKENS } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';

const KEY = 'sk-tg-endpoints';
const UPSTREAM_SECRET = 'sk-upstream-endpoints';

// Prices (nano-units per 1M tokens, per image), rate 1.0x.
const EMB = { in: 20000000n };
const RESP = { in: 2500000000n, out: 10000000000n, cr: 1250000000n };
const IMG = { in: 5000000000n, out: 40000000000n, img: 40000000n };

let mock;
let agent;
let client;

function snapshot() {
  const chan = (id, more = {}) => ({
    id, name: id, provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`, credential: UPSTREAM_SECRET,
    route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE', first_byte_timeout_ms: 5000, ...more,
  });
  const scn = (s) => ({ extra_headers: [{ name: 'x-mock-scenario', value: s }] });
  const one = (model, channel, upstream) => ({ model, tiers: [{ targets: [{ channel_id: channel, upstream_model: upstream }] }] });
  return {
    revision: '1',
    accounts: [{ id: 'acct', name: 'acct', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
    balances: [{ account_id: 'acct', bucket: 'credit', currency: 'USD', balance_nano: '100000000000' }],
    keys: [{ id: 'k-ep', account_id: 'acct', secret_sha256: keyHash(KEY), display_prefix: 'sk-tg-end',
      status: 'KEY_STATUS_ACTIVE', expose_cost: true }],
    channels: [
      chan('ch-main'),
      chan('ch-cached', scn('prompt=100;cached=40;reasoning=9;tokens=7')),
      chan('ch-broken', scn('status=500')),
      chan('ch-nousage', scn('no-usage')),
      chan('ch-anthropic', { provider: 'PROVIDER_TYPE_ANTHROPIC', base_url: mock.url }),
    ],
    routes: [
      one('text-embedding-3-small', 'ch-main', 'text-embedding-3-small-up'),
      {
        model: 'resp-model',
        policy: { max_attempts: 3, retry_on_5xx: true, fallback_enabled: true, backoff_initial_ms: 10, backoff_max_ms: 50 },
        tiers: [
          { targets: [{ channel_id: 'ch-broken', upstream_model: 'resp-primary' }] },
          { targets: [{ channel_id: 'ch-cached', upstream_model: 'resp-backup' }] },
        ],
      },
      one('resp-plain', 'ch-main', 'gpt-4o-up'),
      one('resp-nousage', 'ch-nousage', 'gpt-4o'),
      one('gpt-image-1', 'ch-main', 'gpt-image-1-up'),
      one('claude-only', 'ch-anthropic', 'claude-sonnet-4-5'),
    ],
    price_cards: [{
      id: 'card', version: '1', effective_at_us: '1', currency: 'USD',
      entries: [
        { model: 'text-embedding-3-small', input_per_mtok_nano: String(EMB.in) },
        { model: 'resp-*', input_per_mtok_nano: String(RESP.in), output_per_mtok_nano: String(RESP.out),
          cache_read_per_mtok_nano: String(RESP.cr) },
        { model: 'gpt-image-1', input_per_mtok_nano: String(IMG.in), output_per_mtok_nano: String(IMG.out),
          per_image_nano: String(IMG.img) },
      ],
    }],
    policy: {},
  };
}

// billing/'s rule at rate 1.0x: sum(tokens x price per 1M) / 1e6 + images x per image, rounded half up.
function cost({ input = 0, output = 0, cached = 0, images = 0 }, p) {
  const n = BigInt(input) * (p.in || 0n) + BigInt(output) * (p.out || 0n) + BigInt(cached) * (p.cr || 0n) +
    BigInt(images) * (p.img || 0n) * 1000000n;
  return (n + 500000n) / 1000000n;
}

async function record(id) {
  const r = agent.outbox().find((h) => h.record.request_id === id);
  assert.ok(r, `record ${id} is spooled`);
  return r.record;
}

async function lastUpstream() {
  const r = await mock.requests();
  return r.requests[r.requests.length - 1];
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

test('embeddings: vectors, model rewrite, credential, prompt tokens metered and priced', async () => {
  const body = { model: 'text-embedding-3-small', input: ['the gateway', 'meters embeddings too'], dimensions: 4 };
  const { data, response } = await client.embeddings.create(body).withResponse();
  assert.equal(data.data.length, 2);
  assert.equal(data.data[0].embedding.length, 4);
  const p = promptTokens(body);
  assert.equal(data.usage.prompt_tokens, p);
  const id = response.headers.get('x-request-id');
  assert.match(id, /^req_/);
  assert.match(response.headers.get('x-tollgate-route'), /channel=ch-main; upstream_model=text-embedding-3-small-up/);

  const up = await lastUpstream();
  assert.equal(up.path, '/v1/embeddings');
  assert.equal(JSON.parse(up.body).model, 'text-embedding-3-small-up');
  assert.equal(JSON.parse(up.body).dimensions, 4);
  assert.equal(up.headers.authorization, `Bearer ${UPSTREAM_SECRET}`);

  const rec = await record(id);
  assert.equal(rec.endpoint, '/v1/embeddings');
  assert.equal(rec.upstream_model, 'text-embedding-3-small-up');
  assert.equal(Number(rec.usage.input_tokens), p);
  assert.equal(Number(rec.usage.output_tokens || 0), 0);
  assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_PROVIDER');
  const want = cost({ input: p }, EMB);
  assert.equal(BigInt(rec.cost_nano || 0), want);
  assert.equal(rec.price_card_id, 'card');
});

test('responses (JSON): fallback from a failing primary, cached and reasoning tokens normalized', async () => {
  const body = { model: 'resp-model', input: 'Say hello to the gateway.', instructions: 'Be terse.' };
  const { data, response } = await client.responses.create(body).withResponse();
  assert.equal(data.output_text, answerText(7));
  // mockllm: prompt=100;cached=40;reasoning=9;tokens=7
  assert.equal(data.usage.input_tokens, 100);
  assert.equal(data.usage.input_tokens_details.cached_tokens, 40);
  assert.equal(data.usage.output_tokens, 16);
  assert.equal(data.usage.output_tokens_details.reasoning_tokens, 9);
  assert.equal(response.headers.get('x-tollgate-attempts'), '2');
  const id = response.headers.get('x-request-id');

  const up = await lastUpstream();
  assert.equal(up.path, '/v1/responses');
  assert.equal(JSON.parse(up.body).model, 'resp-backup');
  assert.equal(JSON.parse(up.body).input, body.input);

  const rec = await record(id);
  assert.equal(rec.endpoint, '/v1/responses');
  assert.equal(rec.attempts.length, 2);
  assert.equal(rec.attempts[0].channel_id, 'ch-broken');
  assert.equal(rec.attempts[0].http_status, 500);
  assert.equal(rec.attempts[0].decision, 'ATTEMPT_DECISION_FALLBACK_TIER');
  assert.equal(rec.attempts[1].decision, 'ATTEMPT_DECISION_FINAL');
  assert.equal(rec.fallback_used, true);
  assert.equal(Number(rec.usage.input_tokens), 60);
  assert.equal(Number(rec.usage.cache_read_tokens), 40);
  assert.equal(Number(rec.usage.output_tokens), 16);
  assert.equal(Number(rec.usage.reasoning_tokens), 9);
  const want = cost({ input: 60, cached: 40, output: 16 }, RESP);
  assert.equal(BigInt(rec.cost_nano), want);
  const nano = String(want).padStart(10, '0');
  assert.equal(response.headers.get('x-tollgate-cost'), `${nano.slice(0, -9)}.${nano.slice(-9)} USD`);
});

test('responses (stream): events pass through, usage from response.completed', async () => {
  const body = { model: 'resp-model', input: 'Stream a hello.', stream: true };
  const { data: stream, response } = await client.responses.create(body).withResponse();
  let text = '';
  let final;
  const types = [];
  for await (const ev of stream) {
    types.push(ev.type);
    if (ev.type === 'response.output_text.delta') text += ev.delta;
    if (ev.type === 'response.completed') final = ev.response;
  }
  assert.equal(text, answerText(7));
  assert.equal(types[0], 'response.created');
  assert.equal(types[types.length - 1], 'response.completed');
  assert.equal(final.usage.input_tokens, 100);
  assert.equal(final.usage.output_tokens, 16);
  const rec = await record(response.headers.get('x-request-id'));
  assert.equal(rec.endpoint, '/v1/responses');
  assert.equal(rec.stream, true);
  assert.equal(rec.finish_reason, 'completed');
  assert.equal(Number(rec.usage.input_tokens), 60);
  assert.equal(Number(rec.usage.cache_read_tokens), 40);
  assert.equal(Number(rec.usage.output_tokens), 16);
  assert.equal(Number(rec.usage.reasoning_tokens), 9);
  assert.equal(BigInt(rec.cost_nano), cost({ input: 60, cached: 40, output: 16 }, RESP));
  const up = await lastUpstream();
  assert.equal(up.body.includes('stream_options'), false, 'no chat-only stream_options sent to /v1/responses');
});

test('responses (stream): a response.incomplete keeps its usage', async () => {
  const body = { model: 'resp-plain', input: 'Cut me short.', stream: true, max_output_tokens: 5 };
  const { data: stream, response } = await client.responses.create(body).withResponse();
  let final;
  for await (const ev of stream) if (ev.type === 'response.incomplete') final = ev.response;
  assert.ok(final, 'the stream ended with response.incomplete');
  const p = promptTokens(body);
  assert.equal(final.usage.output_tokens, 5);
  const rec = await record(response.headers.get('x-request-id'));
  assert.equal(rec.finish_reason, 'incomplete');
  assert.equal(rec.upstream_model, 'gpt-4o-up');
  assert.equal(Number(rec.usage.input_tokens), p);
  assert.equal(Number(rec.usage.output_tokens), 5);
  assert.equal(rec.usage.output_source, 'TOKEN_SOURCE_PROVIDER');
  assert.equal(BigInt(rec.cost_nano), cost({ input: p, output: 5 }, RESP));
});

test('responses without provider usage: counted locally, marked so', async () => {
  const enc = get_encoding('o200k_base');
  try {
    for (const stream of [false, true]) {
      const body = { model: 'resp-nousage', input: 'Count me locally, please.', stream };
      const { data, response } = await client.responses.create(body).withResponse();
      if (stream) for await (const ev of data) void ev;
      const rec = await record(response.headers.get('x-request-id'));
      assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_LOCAL_TOKENIZER');
      assert.equal(rec.usage.output_source, 'TOKEN_SOURCE_LOCAL_TOKENIZER');
      assert.equal(Number(rec.usage.input_tokens), enc.encode(body.input).length);
      assert.equal(Number(rec.usage.output_tokens), enc.encode(answerText(DEFAULT_TOKENS)).length, `stream=${stream}`);
    }
  } finally {
    enc.free();
  }
});

test('images: images counted from data[] and priced per image, plus usage tokens', async () => {
  const body = { model: 'gpt-image-1', prompt: 'A lighthouse drawn in one line.', n: 2 };
  const { data, response } = await client.images.generate(body).withResponse();
  assert.equal(data.data.length, 2);
  const p = promptTokens(body);
  assert.equal(data.usage.input_tokens, p);
  assert.equal(data.usage.output_tokens, 2 * DEFAULT_TOKENS);
  const up = await lastUpstream();
  assert.equal(up.path, '/v1/images/generations');
  assert.equal(JSON.parse(up.body).model, 'gpt-image-1-up');
  assert.equal(up.headers.authorization, `Bearer ${UPSTREAM_SECRET}`);
  const rec = await record(response.headers.get('x-request-id'));
  assert.equal(rec.endpoint, '/v1/images/generations');
  assert.equal(Number(rec.usage.images), 2);
  assert.equal(Number(rec.usage.input_tokens), p);
  assert.equal(Number(rec.usage.output_tokens), 2 * DEFAULT_TOKENS);
  assert.equal(BigInt(rec.unit_prices.per_image_nano), IMG.img);
  assert.equal(BigInt(rec.cost_nano), cost({ input: p, output: 2 * DEFAULT_TOKENS, images: 2 }, IMG));
});

test('a model only Anthropic-type channels serve: OpenAI 400 on embeddings and images, Responses converted', async () => {
  const before = (await mock.requests()).count;
  await assert.rejects(client.embeddings.create({ model: 'claude-only', input: 'x' }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.code, 'unsupported_endpoint');
    assert.match(e.message, /Anthropic-type channels/);
    assert.match(e.headers.get('x-request-id'), /^req_/);
    return true;
  });
  await assert.rejects(client.images.generate({ model: 'claude-only', prompt: 'x' }), (e) => e.status === 400);
  assert.equal((await mock.requests()).count, before, 'nothing reached an upstream');
  // Responses converts (proto/, issue 13 item 5): past the protocol check,
  // refused here only because claude-only has no price
  await assert.rejects(client.responses.create({ model: 'claude-only', input: 'x' }),
    (e) => e.status === 503 && e.code === 'model_not_priced');
});

test('stream: true on embeddings is refused with an OpenAI 400', async () => {
  const r = await fetch(`${agent.base}/embeddings`, {
    method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'text-embedding-3-small', input: 'x', stream: true }),
  });
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.code, 'stream_not_supported');
});
