// Provider types per vendor (issue 13 item 6): a channel of each
// OpenAI-compatible vendor type (DeepSeek, Qwen, Kimi, GLM, Gemini's OpenAI
// endpoint) on mockllm answering in that vendor's usage shape
// (usage-shape=), called with the official `openai` SDK, JSON and stream:
// the receipt bills the vendor's cache reads at the cache-read price, to
// the nano-unit. An OpenAI-compatible channel (the type DeepSeek, Kimi and
// the others had before they had their own) keeps reading every name it
// read then, DeepSeek's and Kimi's included: upgrading the agent does not
// re-price it. A typed channel reads its own vendor's names only. The
// conversion paths read the vendor's names too: an Anthropic client on a
// DeepSeek channel, a Responses client on a Kimi channel.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';

const KEY = 'sk-tg-vendors-main';
let mock;
let agent;
let client;
let ant;

// prompt 50 tokens of which 30 cache reads, 4 out; prices per token:
// input 1000 nano, cache read 100, output 2000.
const SCN = 'prompt=50;cached=30;tokens=4';
const CACHED_COST = 20 * 1000 + 30 * 100 + 4 * 2000; // 31000
const UNCACHED_COST = 50 * 1000 + 4 * 2000; // 58000

const VENDORS = [
  // [model, provider type, mockllm usage shape, cache reads billed]
  ['deepseek-chat', 'PROVIDER_TYPE_DEEPSEEK', 'deepseek', 30],
  ['qwen-plus', 'PROVIDER_TYPE_QWEN', 'qwen', 30],
  ['kimi-k2', 'PROVIDER_TYPE_KIMI', 'kimi', 30],
  ['glm-4.6', 'PROVIDER_TYPE_GLM', 'glm', 30],
  ['gemini-2.5-flash', 'PROVIDER_TYPE_GEMINI', 'gemini', 30],
  ['gpt-4o-mini', 'PROVIDER_TYPE_OPENAI', 'openai', 30],
  // typed before DeepSeek and Kimi had types: billed as before the upgrade
  ['compat-deepseek-shape', 'PROVIDER_TYPE_OPENAI_COMPATIBLE', 'deepseek', 30],
  ['compat-kimi-shape', 'PROVIDER_TYPE_OPENAI_COMPATIBLE', 'kimi', 30],
  ['compat-openai-shape', 'PROVIDER_TYPE_OPENAI_COMPATIBLE', 'openai', 30],
  // another vendor's type: Kimi's names are not DeepSeek's, all 50 are input
  ['kimi-on-deepseek-type', 'PROVIDER_TYPE_DEEPSEEK', 'kimi', 0],
  // usage beside finish_reason on the last chunk, no "choices": [] chunk (as reported for GLM)
  ['glm-usage-on-finish', 'PROVIDER_TYPE_GLM', 'glm;usage-on-finish', 30],
];

function snapshot() {
  return {
    revision: '1',
    accounts: [{ id: 'acct-main', name: 'main', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
    balances: [{ account_id: 'acct-main', bucket: 'credit', currency: 'USD', balance_nano: '100000000000' }],
    keys: [{ id: 'k-main', account_id: 'acct-main', secret_sha256: keyHash(KEY), display_prefix: KEY.slice(0, 9),
      status: 'KEY_STATUS_ACTIVE', expose_cost: true }],
    channels: VENDORS.map(([model, provider, shape]) => ({
      id: `ch-${model}`, name: `ch-${model}`, provider, base_url: `${mock.url}/v1`, credential: `upstream-${model}`,
      route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE', first_byte_timeout_ms: 5000,
      extra_headers: [{ name: 'x-mock-scenario', value: `${SCN};usage-shape=${shape}` }],
    })),
    routes: VENDORS.map(([model]) => ({ model, tiers: [{ targets: [{ channel_id: `ch-${model}`, upstream_model: model }] }] })),
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
  ant = new Anthropic({ apiKey: KEY, baseURL: agent.url, maxRetries: 0, timeout: 15000 });
});
after(async () => {
  await agent?.stop();
  await mock?.stop();
});

function assertBilled(rec, cached) {
  assert.equal(rec.usage.input_source, 'TOKEN_SOURCE_PROVIDER');
  assert.equal(Number(rec.usage.cache_read_tokens ?? 0), cached);
  assert.equal(Number(rec.usage.input_tokens), 50 - cached);
  assert.equal(Number(rec.usage.output_tokens), 4);
  assert.equal(BigInt(rec.cost_nano), BigInt(cached ? CACHED_COST : UNCACHED_COST));
}

for (const [model, provider, shape, cached] of VENDORS) {
  test(`${provider} channel, ${shape} usage: JSON billed with ${cached} cache reads`, async () => {
    const { data, response } = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'Hello.' }],
    }).withResponse();
    assert.equal(data.usage.prompt_tokens, 50); // the vendor's own usage, passed through
    const rec = await agent.waitRecord(response.headers.get('x-request-id'));
    assertBilled(rec, cached);
    assert.equal(response.headers.get('x-tollgate-cost'), `0.000${cached ? '031' : '058'}000 USD`);
    const raw = JSON.parse(rec.usage.raw_provider_usage);
    if (shape === 'deepseek') assert.equal(raw.prompt_cache_hit_tokens, 30);
    if (shape === 'kimi') assert.equal(raw.cached_tokens, 30);
  });

  test(`${provider} channel, ${shape} usage: stream billed with ${cached} cache reads`, async () => {
    const { data: stream, response } = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'Hello.' }], stream: true, stream_options: { include_usage: true },
    }).withResponse();
    let usage;
    for await (const chunk of stream) if (chunk.usage) usage = chunk.usage;
    assert.equal(usage.prompt_tokens, 50);
    const rec = await agent.waitRecord(response.headers.get('x-request-id'));
    assertBilled(rec, cached);
  });
}

test('Anthropic client on a DeepSeek channel: cache_read_input_tokens from DeepSeek\'s names, billed once', async () => {
  const { data, response } = await ant.messages.create({
    model: 'deepseek-chat', max_tokens: 100, messages: [{ role: 'user', content: 'Hello.' }],
  }).withResponse();
  assert.equal(data.usage.cache_read_input_tokens, 30);
  assert.equal(data.usage.input_tokens, 20);
  assertBilled(await agent.waitRecord(response.headers.get('x-request-id')), 30);
  const s = ant.messages.stream({ model: 'deepseek-chat', max_tokens: 100, messages: [{ role: 'user', content: 'Hello.' }] });
  const final = await s.finalMessage();
  assert.equal(final.usage.cache_read_input_tokens, 30);
  assert.equal(final.usage.input_tokens, 20);
});

test('Responses client on a Kimi channel: converted to chat, Kimi\'s cached_tokens billed as cache reads', async () => {
  const { data, response } = await client.responses.create({ model: 'kimi-k2', input: 'Hello.' }).withResponse();
  assert.equal(data.usage.input_tokens, 50);
  assert.equal(data.usage.input_tokens_details.cached_tokens, 30);
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  assert.equal(rec.endpoint, '/v1/responses');
  assertBilled(rec, 30);
  const up = (await mock.requests()).requests.at(-1);
  assert.equal(up.path, '/v1/chat/completions');
});
