// What a browser app and the openai SDK's models API need: GET
// /v1/models/{id} in OpenAI's shape (404 model_not_found for a model the
// catalog lacks or the key may not use), and CORS for the origins the
// operator allows (--cors-origin): preflights answered 204, the allow-origin
// header on answers, nothing for other origins.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';

const KEY = 'sk-tg-models-cors';
const KEY_NARROW = 'sk-tg-models-narrow'; // may use gpt-4o* only
const APP = 'https://app.example.com';
let mock;
let agent;

before(async () => {
  mock = await startMock();
  agent = await startAgent({
    revision: '1',
    accounts: [{ id: 'acct', name: 'a', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
    balances: [{ account_id: 'acct', bucket: 'credit', currency: 'USD', balance_nano: '1000000000000' }],
    keys: [
      { id: 'k1', account_id: 'acct', secret_sha256: keyHash(KEY), status: 'KEY_STATUS_ACTIVE' },
      { id: 'k2', account_id: 'acct', secret_sha256: keyHash(KEY_NARROW), status: 'KEY_STATUS_ACTIVE',
        model_allowlist: ['gpt-4o*'] },
    ],
    channels: [{ id: 'ch', name: 'ch', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`,
      credential: 'sk-upstream-up', route_type: 'ROUTE_TYPE_DIRECT' }],
    routes: [
      { model: 'gpt-4o', tiers: [{ targets: [{ channel_id: 'ch' }] }] },
      { model: 'org/special-model', tiers: [{ targets: [{ channel_id: 'ch' }] }] },
    ],
    price_cards: [{ id: 'card', version: '1', effective_at_us: '0', currency: 'USD',
      entries: [{ model: '*', input_per_mtok_nano: '1000000000', output_per_mtok_nano: '1000000000' }] }],
  }, { args: ['--cors-origin', APP] });
});
after(async () => {
  await agent?.stop();
  await mock?.stop();
});

test('models.retrieve: one model in OpenAI shape; unknown or not allowed: 404 model_not_found', async () => {
  const client = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0 });
  const m = await client.models.retrieve('gpt-4o');
  assert.equal(m.id, 'gpt-4o');
  assert.equal(m.object, 'model');
  assert.equal(m.owned_by, 'tollgate');
  assert.equal(typeof m.created, 'number');
  // the SDK encodes the id as a path segment
  assert.equal((await client.models.retrieve('org/special-model')).id, 'org/special-model');
  await assert.rejects(client.models.retrieve('no-such-model'), (e) => {
    assert.equal(e.status, 404);
    assert.equal(e.code, 'model_not_found');
    assert.match(e.message, /The model 'no-such-model' does not exist or you do not have access to it/);
    return true;
  });
  const narrow = new OpenAI({ apiKey: KEY_NARROW, baseURL: agent.base, maxRetries: 0 });
  assert.equal((await narrow.models.retrieve('gpt-4o')).id, 'gpt-4o');
  await assert.rejects(narrow.models.retrieve('org/special-model'), (e) => e.status === 404 && e.code === 'model_not_found');
  const list = await narrow.models.list();
  assert.deepEqual(list.data.map((x) => x.id), ['gpt-4o']);
  // a bad key is still 401, not a model answer
  const bad = new OpenAI({ apiKey: 'sk-wrong', baseURL: agent.base, maxRetries: 0 });
  await assert.rejects(bad.models.retrieve('gpt-4o'), (e) => e.status === 401);
});

test('CORS: a preflight from an allowed origin gets 204 and the allow headers; answers carry the origin', async () => {
  const pre = await fetch(`${agent.base}/chat/completions`, {
    method: 'OPTIONS',
    headers: { origin: APP, 'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type, x-stainless-os' },
  });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get('access-control-allow-origin'), APP);
  assert.match(pre.headers.get('access-control-allow-methods'), /POST/);
  assert.equal(pre.headers.get('access-control-allow-headers'), 'authorization, content-type, x-stainless-os');
  assert.equal(pre.headers.get('access-control-max-age'), '86400');
  const r = await fetch(`${agent.base}/chat/completions`, {
    method: 'POST',
    headers: { origin: APP, authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }),
  });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('access-control-allow-origin'), APP);
  assert.match(r.headers.get('access-control-expose-headers'), /x-request-id/);
  await r.text();
  // errors carry it too, so the browser app can read them
  const e = await fetch(`${agent.base}/models`, { headers: { origin: APP } });
  assert.equal(e.status, 401);
  assert.equal(e.headers.get('access-control-allow-origin'), APP);
});

test('CORS: another origin gets no CORS headers and its preflight is refused', async () => {
  const pre = await fetch(`${agent.base}/chat/completions`, {
    method: 'OPTIONS', headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' },
  });
  assert.equal(pre.status, 405);
  assert.equal(pre.headers.get('access-control-allow-origin'), null);
  const r = await fetch(`${agent.base}/models`, { headers: { origin: 'https://evil.example', authorization: `Bearer ${KEY}` } });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('access-control-allow-origin'), null);
});

test('models.retrieve 404: an id that is not UTF-8, or is cut mid-character, still gives valid UTF-8 JSON', async () => {
  for (const [raw, want] of [['%FF%FEgpt', '\ufffd\ufffdgpt'], [`x${'%C3%A9'.repeat(120)}`, `x${'é'.repeat(101)}'`]]) {
    const r = await fetch(`${agent.base}/models/${raw}`, { headers: { authorization: `Bearer ${KEY}` } });
    assert.equal(r.status, 404);
    const bytes = Buffer.from(await r.arrayBuffer());
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes); // throws on invalid UTF-8
    const body = JSON.parse(text);
    assert.equal(body.error.code, 'model_not_found');
    assert.ok(body.error.message.includes(want), body.error.message);
  }
});
