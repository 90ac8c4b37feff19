// The key holder's own view (GET /v1/tollgate/key) and the
// x-tollgate-budget-remaining header: a real tollgate-cp, a real agent
// enrolled with it and mockllm upstream. A key with a daily limit spends a
// little; its view, once the agent's next lease answer came, says what the
// admin API's GetKeyLimits says (spent, remaining), the wallet's remaining
// is its settled balance, a bad key gets 401 in the client's shape, a
// paused key sees its status. Then a standalone agent (a snapshot file, no
// control plane), whose numbers come from its local authority.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';
import { startCp, seed, ENROLL_TOKEN } from './cp_agent_lib.mjs';
import { freePort, tmpdir, until } from './lib/proc.mjs';

const messages = [{ role: 'user', content: 'Spend a little, please.' }];
const view = async (url, key, headers = {}) => {
  const r = await fetch(`${url}/v1/tollgate/key`, { headers: { authorization: `Bearer ${key}`, ...headers } });
  return { status: r.status, body: await r.json() };
};

describe('key view with a control plane', () => {
  let mock, cp, agent, acct, key, plainKey, limit;

  before(async () => {
    mock = await startMock();
    const port = await freePort();
    // a short lease TTL: the agent renews (and learns the settled numbers) every second
    cp = await startCp({ dataDir: tmpdir('tg-keyview-cp-'), extraArgs: ['--listen', `127.0.0.1:${port}`, '--lease-ttl-ms', '3000'] });
    await seed(cp, { topup: 0n });
    const ch = await cp.adminCall('CreateChannel', { channel: {
      name: 'mock', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`,
      route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-upstream-mock',
    } });
    await cp.adminCall('PutRoute', { route: { model: 'gpt-4o', tiers: [{ targets: [{ channel_id: ch.id }] }] } });
    acct = await cp.adminCall('CreateAccount', { account: { name: 'viewer', billing_mode: 'BILLING_MODE_PREPAID',
      buckets: [{ name: 'credit', currency: 'USD' }, { name: 'wallet', currency: 'USD' }] } });
    await cp.adminCall('TopUp', { account_id: acct.id, bucket: 'wallet', amount_nano: String(100n * 1000000000n),
      currency: 'USD', idempotency_key: 'seed-viewer', reason: 'e2e' });
    limit = 2n * 1000000000n;
    key = await cp.adminCall('CreateKey', { key: { account_id: acct.id, name: 'daily-key', expose_cost: true,
      model_allowlist: ['gpt-4o*'],
      spend_limits: [{ window: 'LIMIT_WINDOW_DAY', limit_nano: String(limit), currency: 'USD' }] } });
    plainKey = await cp.adminCall('CreateKey', { key: { account_id: acct.id, name: 'plain-key' } });
    agent = await startAgent(null, { noSnapshot: true, args: ['--cp', `127.0.0.1:${port}`, '--enroll-token', ENROLL_TOKEN] });
    await until(async () => (await fetch(`${agent.url}/v1/models`, { headers: { authorization: `Bearer ${plainKey.secret}` } })).status === 200,
      { timeoutMs: 15000, what: 'the keys to reach the agent' });
  });

  after(async () => {
    await agent?.stop();
    await cp?.stop();
    await mock?.stop();
  });

  test('before any request: the key, its models, a limit the agent never leased is unknown (not invented)', async () => {
    const { status, body } = await view(agent.url, key.secret);
    assert.equal(status, 200);
    assert.equal(body.name, 'daily-key');
    assert.equal(body.id_prefix, key.key.display_prefix);
    assert.equal(body.status, 'active');
    assert.equal(body.status_reason, undefined);
    assert.deepEqual(body.allowed_models, ['gpt-4o*']);
    assert.equal(body.limits.length, 1);
    const l = body.limits[0];
    assert.equal(l.scope, 'key');
    assert.equal(l.window, 'day');
    assert.equal(l.currency, 'USD');
    assert.equal(BigInt(l.limit_nano), limit);
    assert.equal(l.spent_nano, null);
    assert.equal(l.remaining_nano, null);
    assert.match(l.unknown_reason, /not leased/);
    assert.ok(Date.parse(l.resets_at) > Date.now() && Date.parse(l.resets_at) <= Date.now() + 86400e3);
    assert.deepEqual(body.buckets.map((b) => b.bucket), ['credit', 'wallet']);
    const plain = await view(agent.url, plainKey.secret);
    assert.equal(plain.body.allowed_models, 'all');
    assert.deepEqual(plain.body.limits, []);
  });

  test('after spending: the view agrees with GetKeyLimits and the settled balance, allowing for its age', async () => {
    const client = new OpenAI({ apiKey: key.secret, baseURL: agent.base, maxRetries: 0 });
    for (let i = 0; i < 3; i++) {
      const { response } = await client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
      assert.match(response.headers.get('x-tollgate-cost'), /^\d+\.\d{9} USD$/);
      assert.match(response.headers.get('x-tollgate-budget-remaining'), /^\d+\.\d{9} USD$/);
    }
    // a key without expose_cost gets no such header
    const plain = new OpenAI({ apiKey: plainKey.secret, baseURL: agent.base, maxRetries: 0 });
    const { response } = await plain.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
    assert.equal(response.headers.get('x-tollgate-budget-remaining'), null);
    await until(() => agent.outbox().length === 0, { timeoutMs: 20000, what: 'the outbox to drain' });
    const settledAt = Date.now();
    // the agent's numbers catch up at its next lease answer: wait until the
    // view's numbers are newer than the settlement, then compare
    let l, wallet;
    const admin = await until(async () => {
      const { body } = await view(agent.url, key.secret);
      l = body.limits[0];
      wallet = body.buckets.find((b) => b.bucket === 'wallet');
      if (l.spent_nano === null || Date.parse(l.as_of) < settledAt - 1000 || Number(l.as_of_us) / 1000 < settledAt) return null;
      if (Number(wallet.as_of_us) / 1000 < settledAt) return null;
      return (await cp.adminCall('GetKeyLimits', { key_id: key.key.id })).limits[0];
    }, { timeoutMs: 15000, what: 'a lease answer after the settlement' });
    assert.ok(l.age_s >= 0 && l.age_s < 5, `age ${l.age_s}`);
    assert.ok(BigInt(l.spent_nano) > 0n);
    assert.equal(BigInt(l.spent_nano), BigInt(admin.spent_nano), 'spent as the control plane settled it');
    assert.equal(BigInt(l.remaining_nano), limit - BigInt(l.spent_nano) - BigInt(l.held_nano));
    assert.equal(BigInt(l.held_nano), 0n);
    const bal = (await cp.adminCall('GetBalances', { account_id: acct.id })).balances.find((b) => b.bucket === 'wallet');
    assert.equal(BigInt(wallet.remaining_nano), BigInt(bal.balance_nano), 'the wallet as settled (nothing unsettled here)');
    assert.equal(wallet.currency, 'USD');
    assert.ok(wallet.age_s >= 0 && wallet.age_s < 5);
    // the header says the same number
    const { response: r2 } = await client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
    const [amt, cur] = r2.headers.get('x-tollgate-budget-remaining').split(' ');
    assert.equal(cur, 'USD');
    assert.ok(Number(amt) <= Number(wallet.remaining) && Number(amt) > Number(wallet.remaining) - 1,
      `${amt} vs ${wallet.remaining} (less this request's reservation)`);
  });

  test('bad keys get 401 in the client\'s shape; a non-GET gets 405', async () => {
    const bad = await view(agent.url, 'sk-not-a-key');
    assert.equal(bad.status, 401);
    assert.equal(bad.body.error.code, 'invalid_api_key');
    const anth = await fetch(`${agent.url}/v1/tollgate/key`, { headers: { 'x-api-key': 'sk-not-a-key', 'anthropic-version': '2023-06-01' } });
    assert.equal(anth.status, 401);
    const ab = await anth.json();
    assert.equal(ab.type, 'error');
    assert.equal(ab.error.type, 'authentication_error');
    const none = await fetch(`${agent.url}/v1/tollgate/key`);
    assert.equal(none.status, 401);
    const post = await fetch(`${agent.url}/v1/tollgate/key`, { method: 'POST', headers: { authorization: `Bearer ${key.secret}` } });
    assert.equal(post.status, 405);
    // x-api-key works as for any API request, and Anthropic clients get the same JSON
    const viaHeader = await fetch(`${agent.url}/v1/tollgate/key`, { headers: { 'x-api-key': key.secret, 'anthropic-version': '2023-06-01' } });
    assert.equal(viaHeader.status, 200);
    assert.equal((await viaHeader.json()).name, 'daily-key');
  });

  test('a paused key sees its status and reason (and is still refused on the API)', async () => {
    await cp.adminCall('SetKeyStatus', { id: plainKey.key.id, status: 'KEY_STATUS_PAUSED', reason: 'budget review' });
    const body = await until(async () => {
      const v = await view(agent.url, plainKey.secret);
      return v.status === 200 && v.body.status === 'paused' ? v.body : null;
    }, { timeoutMs: 10000, what: 'the pause to reach the agent' });
    assert.equal(body.status_reason, 'budget review');
    const r = await fetch(`${agent.base}/chat/completions`, { method: 'POST',
      headers: { authorization: `Bearer ${plainKey.secret}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', messages }) });
    assert.equal(r.status, 403);
  });
});

describe('key view on a standalone agent (local authority)', () => {
  let mock, agent;
  const KEY = 'sk-tg-view-standalone';
  const LIMIT = 5n * 1000000000n;
  const BAL = 100n * 1000000000n;

  before(async () => {
    mock = await startMock();
    agent = await startAgent({
      revision: '1',
      accounts: [{ id: 'acct-1', name: 'one', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE',
        buckets: [{ name: 'credit', currency: 'USD' }] }],
      balances: [{ account_id: 'acct-1', bucket: 'credit', currency: 'USD', balance_nano: String(BAL), updated_at_us: '1000000' }],
      keys: [{ id: 'k-1', name: 'standalone', account_id: 'acct-1', secret_sha256: keyHash(KEY), display_prefix: KEY.slice(0, 9),
        status: 'KEY_STATUS_ACTIVE', expose_cost: true,
        spend_limits: [{ window: 'LIMIT_WINDOW_TOTAL', limit_nano: String(LIMIT), currency: 'USD' }] }],
      channels: [{ id: 'ch-1', name: 'ch-1', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`, credential: 'sk-upstream-up',
        route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE' }],
      routes: [{ model: 'gpt-4o', tiers: [{ targets: [{ channel_id: 'ch-1' }] }] }],
      price_cards: [{ id: 'card', version: '1', effective_at_us: '1', currency: 'USD',
        entries: [{ model: 'gpt-4o', input_per_mtok_nano: '2500000333', output_per_mtok_nano: '10000000007' }] }],
    });
  });

  after(async () => {
    await agent?.stop();
    await mock?.stop();
  });

  test('the numbers come from the snapshot: the limit less what this agent spent, the balance likewise', async () => {
    const before = await view(agent.url, KEY);
    assert.equal(before.status, 200);
    assert.equal(before.body.limits[0].spent_nano, null, 'never leased yet');
    const credit0 = before.body.buckets[0];
    assert.equal(BigInt(credit0.remaining_nano), BAL, 'the snapshot\'s balance');
    assert.ok(credit0.age_s > 1e6, 'its age is the snapshot balance\'s');
    const client = new OpenAI({ apiKey: KEY, baseURL: agent.base, maxRetries: 0 });
    let cost = 0n;
    let header;
    for (let i = 0; i < 2; i++) {
      const { response } = await client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
      cost += BigInt((await agent.waitRecord(response.headers.get('x-request-id'))).cost_nano);
      header = response.headers.get('x-tollgate-budget-remaining');
    }
    assert.ok(cost > 0n);
    assert.match(header, /^\d+\.\d{9} USD$/);
    const { body } = await view(agent.url, KEY);
    const l = body.limits[0];
    assert.equal(l.window, 'total');
    assert.equal(l.resets_at, null, 'a total limit never resets');
    assert.equal(BigInt(l.spent_nano), cost);
    assert.equal(BigInt(l.held_nano), 0n);
    assert.equal(BigInt(l.remaining_nano), LIMIT - cost);
    const credit = body.buckets[0];
    assert.equal(BigInt(credit.remaining_nano), BAL - cost);
    assert.ok(credit.age_s < 60);
  });
});
