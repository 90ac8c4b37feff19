// tollgate-agent with the real control plane (tollgate-cp on its embedded
// LMDB store) and mockllm: the agent enrolls with a token, receives its
// configuration over Sync (and later changes as updates), serves through the
// official openai SDK, reports signed usage batches and the control plane
// settles them: the wallet balance drops by exactly the recorded costs, and
// a card with a per-request fee is priced alike on both sides. With
// the control plane down the agent keeps serving and spools; when it comes
// back every spooled record settles, exactly once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent } from '../../agent/testing/agent.mjs';
import { startCp, seed, balance, costOf, PRICE, ENROLL_TOKEN } from './cp_agent_lib.mjs';
import { freePort, tmpdir, until } from './lib/proc.mjs';

let mock;
let cp;
let cpPort;
let cpDir;
let agent;
let ids;
let secret;
let client;
const TOPUP = 100n * 1000000000n;
const messages = [{ role: 'user', content: 'Settle this, please.' }];

before(async () => {
  mock = await startMock();
  cpPort = await freePort();
  cpDir = tmpdir('tg-agent-cp-');
  cp = await startCp({ dataDir: cpDir, extraArgs: ['--listen', `127.0.0.1:${cpPort}`] });
  ids = await seed(cp, { topup: TOPUP });
  const ch = await cp.adminCall('CreateChannel', { channel: {
    name: 'mock-pooled', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`,
    route_type: 'ROUTE_TYPE_POOLED', cost_rate_ppm: '700000', credential: 'sk-upstream-mock',
  } });
  await cp.adminCall('PutRoute', { route: { model: 'gpt-4o',
    tiers: [{ targets: [{ channel_id: ch.id, upstream_model: 'gpt-4o-2024-08-06' }] }] } });
  const k = await cp.adminCall('CreateKey', { key: { account_id: ids.account, name: 'e2e', expose_cost: true } });
  secret = k.secret;
  agent = await startAgent(null, { noSnapshot: true,
    args: ['--cp', `127.0.0.1:${cpPort}`, '--enroll-token', ENROLL_TOKEN] });
  await until(async () => (await fetch(`${agent.url}/readyz`)).status === 200,
    { timeoutMs: 15000, what: 'the agent to receive its snapshot over Sync' })
    .catch((e) => { throw new Error(`${e.message}\nagent:\n${agent.proc.output()}\ncp:\n${cp.proc.output().slice(-3000)}`); });
  client = new OpenAI({ apiKey: secret, baseURL: agent.base, maxRetries: 0, timeout: 15000 });
});
after(async () => {
  await agent?.stop();
  await cp?.stop();
  await mock?.stop();
});

async function spent(recordIds) {
  let sum = 0n;
  for (const id of recordIds) sum += BigInt((await agent.waitRecord(id)).cost_nano);
  return sum;
}

test('enrolled, configured over Sync, a request is settled: the wallet drops by its cost', async () => {
  const { data, response } = await client.chat.completions.create({ model: 'gpt-4o', messages }).withResponse();
  assert.equal(data.model, 'gpt-4o-2024-08-06');
  const id = response.headers.get('x-request-id');
  const rec = await agent.waitRecord(id);
  assert.equal(rec.account_id, ids.account);
  assert.equal(rec.bucket, 'wallet');
  assert.equal(rec.price_card_id, ids.card);
  assert.ok(BigInt(rec.cost_nano) > 0n);
  const want = TOPUP - BigInt(rec.cost_nano);
  await until(async () => (await balance(cp, ids.account)) === want, { timeoutMs: 15000, what: 'settlement' });
  await until(() => agent.outbox().length === 0, { timeoutMs: 5000, what: 'the outbox to drain after the ack' });
  assert.match(agent.proc.output(), /enrolled as /);
});

test('a card with a per-request fee: the agent and the control plane agree to the nano-unit', async () => {
  const FEE = 1234567n; // nano-units per request, before the card's rate
  const card = await cp.adminCall('PublishPriceCard', { card: {
    id: ids.card, currency: 'USD', note: 'e2e: per-request fee',
    entries: [{ model: 'gpt-4o', input_per_mtok_nano: String(PRICE.input), output_per_mtok_nano: String(PRICE.output),
      cache_read_per_mtok_nano: String(PRICE.cacheRead), per_request_nano: String(FEE), rate_ppm: String(PRICE.rate) }],
  } });
  // the agent prices with the new version once Sync has brought it
  const rec = await until(async () => {
    const { response } = await client.chat.completions.create({ model: 'gpt-4o', messages }).withResponse();
    const r = await agent.waitRecord(response.headers.get('x-request-id'));
    return String(r.price_version) === String(card.version) ? r : null;
  }, { timeoutMs: 15000, what: `the agent to price with card version ${card.version}` });
  const want = costOf(rec.usage, PRICE.rate, FEE);
  assert.ok(want > costOf(rec.usage), 'the fee is charged');
  assert.equal(BigInt(rec.cost_nano), want);
  assert.equal(BigInt(rec.unit_prices.per_request_nano), FEE);
  const row = await until(async () => {
    const page = await cp.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
    return page.entries.find((e) => e.record && e.record.request_id === rec.request_id);
  }, { timeoutMs: 15000, what: 'the record to settle' });
  assert.equal(row.cost_mismatch, false);
  assert.equal(BigInt(row.amount_nano), -want);
  // upstream cost: the same rule at the channel's cost rate (0.7)
  assert.equal(BigInt(row.record.upstream_cost_nano), costOf(rec.usage, 700000n, FEE));
});

test('a configuration change reaches the agent as a Sync update', async () => {
  const route = await cp.adminCall('GetRoute', { id: 'gpt-4o' });
  // a model is served only with a price in effect: its card first
  await cp.adminCall('PublishPriceCard', { card: { id: 'card-mini', currency: 'USD', note: 'e2e',
    entries: [{ model: 'gpt-4o-mini', input_per_mtok_nano: '150000000', output_per_mtok_nano: '600000000' }] } });
  await cp.adminCall('PutRoute', { route: { model: 'gpt-4o-mini', tiers: route.tiers } });
  const r = await until(async () => {
    try { return await client.chat.completions.create({ model: 'gpt-4o-mini', messages }); } catch { return null; }
  }, { timeoutMs: 10000, what: 'gpt-4o-mini to be served' });
  assert.equal(r.model, 'gpt-4o-2024-08-06');
});

test('settlements and lease grants do not churn the config stream (balances go out when they cross zero, or every 10 s)', async () => {
  let installs = 0;
  const count = (d) => { installs += (d.toString().match(/configuration revision \d+ installed/g) || []).length; };
  agent.proc.child.stderr.on('data', count);
  agent.proc.child.stdout.on('data', count);
  try {
    for (let i = 0; i < 20; i++) {
      await client.chat.completions.create({ model: 'gpt-4o', messages });
      await new Promise((r) => setTimeout(r, 100)); // a settlement per report interval, about
    }
    await until(() => agent.outbox().length === 0, { timeoutMs: 10000, what: 'the outbox to drain' });
  } finally {
    agent.proc.child.stderr.off('data', count);
    agent.proc.child.stdout.off('data', count);
  }
  // before: one installed revision per settlement and per lease grant (a dozen or more here)
  assert.ok(installs <= 3, `${installs} configuration revisions installed during 20 settled requests`);
});

test('control plane down: the agent serves and spools; back up: every record settles once', async () => {
  await until(() => agent.outbox().length === 0, { timeoutMs: 10000, what: 'earlier records to drain' })
    .catch((e) => { throw new Error(`${e.message}\n${agent.proc.output().split('\n').filter((l) => !l.includes('"comp":"usage"')).slice(-15).join('\n')}`); });
  // read after the drain: an earlier test's last record may still be settling
  const before = await balance(cp, ids.account);
  await cp.stop();
  const reqIds = [];
  for (let i = 0; i < 3; i++) {
    const { response } = await client.chat.completions.create({ model: 'gpt-4o', messages }).withResponse();
    reqIds.push(response.headers.get('x-request-id'));
  }
  const cost = await spent(reqIds);
  assert.equal(agent.outbox().length, 3);
  cp = await startCp({ dataDir: cpDir, extraArgs: ['--listen', `127.0.0.1:${cpPort}`] });
  await until(async () => (await balance(cp, ids.account)) === before - cost,
    { timeoutMs: 30000, what: 'the spooled records to settle' });
  await until(() => agent.outbox().length === 0, { timeoutMs: 10000, what: 'the outbox to drain' });
  // Exactly once: nothing more is charged afterwards.
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(await balance(cp, ids.account), before - cost);
});

test('a request no upstream served: a 502 to the client, a zero-cost receipt with its attempts in the ledger', async () => {
  const dead = await freePort(); // nothing listens there: every attempt is refused
  const ch = await cp.adminCall('CreateChannel', { channel: {
    name: 'dead', provider: 'PROVIDER_TYPE_OPENAI', base_url: `http://127.0.0.1:${dead}/v1`,
    route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-upstream-dead',
  } });
  await cp.adminCall('PublishPriceCard', { card: { id: 'card-dead', currency: 'USD', note: 'e2e',
    entries: [{ model: 'gpt-dead', input_per_mtok_nano: '150000000', output_per_mtok_nano: '600000000' }] } });
  await cp.adminCall('PutRoute', { route: { model: 'gpt-dead', tiers: [{ targets: [{ channel_id: ch.id }] }] } });
  const before = await balance(cp, ids.account);
  const err = await until(async () => {
    try {
      await client.chat.completions.create({ model: 'gpt-dead', messages });
      return null;
    } catch (e) {
      return e.status === 404 ? null : e; // 404 until Sync brought the route
    }
  }, { timeoutMs: 15000, what: 'the gpt-dead route to reach the agent' });
  assert.equal(err.status, 502);
  assert.equal(err.code, 'upstream_error');
  const reqId = err.headers.get('x-request-id');
  assert.ok(reqId);
  const row = await until(async () => {
    const page = await cp.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
    return page.entries.find((e) => e.record && e.record.request_id === reqId);
  }, { timeoutMs: 15000, what: 'the failed request\'s receipt to settle' })
    .catch((e) => { throw new Error(`${e.message}\n${cp.proc.output().slice(-2000)}`); });
  assert.equal(BigInt(row.amount_nano ?? 0), 0n);
  assert.equal(row.record.client_status, 502);
  assert.ok(row.record.attempts.length >= 1);
  for (const a of row.record.attempts) {
    assert.equal(a.channel_id, ch.id);
    assert.equal(a.error_class, 'ERROR_CLASS_CONNECT');
  }
  assert.equal(row.record.requested_model, 'gpt-dead');
  assert.equal(await balance(cp, ids.account), before);
  // it does not hold the outbox up: later records settle too
  await until(() => agent.outbox().length === 0, { timeoutMs: 10000, what: 'the outbox to drain' });
  const ok = await client.chat.completions.create({ model: 'gpt-4o', messages }).withResponse();
  await until(async () => {
    const page = await cp.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
    return page.entries.find((e) => e.record && e.record.request_id === ok.response.headers.get('x-request-id'));
  }, { timeoutMs: 15000, what: 'a later record to settle' });
});
