// Hard budgets across agents: a real tollgate-cp (on LMDB, and on a real
// etcd), three real tollgate-agents enrolled with it, mockllm upstream, the
// official openai SDK. A prepaid wallet that covers about ten requests gets
// a burst of sixty concurrent requests spread over the three agents: what
// settles never exceeds the wallet, the balance never goes below zero, the
// rest are refused with 402 insufficient_quota, and the ledger rows add up
// to the balance movement to the nano-unit. Reservations are released on
// failures (a dead upstream does not leak budget), a killed agent's hold
// expires and returns, and a restarted control plane honours the holds out.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent } from '../../agent/testing/agent.mjs';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { startCp, startEtcd, seed, costOf, FakeAgent, ENROLL_TOKEN, ADMIN_TOKEN } from './cp_agent_lib.mjs';
import { ROOT, bin, freePort, tmpdir, until } from './lib/proc.mjs';

const TTL_MS = 3000; // short lease TTL so expiry is testable
const messages = [{ role: 'user', content: 'Spend a little, please.' }];

async function balances(cp, account) {
  const r = await cp.adminCall('GetBalances', { account_id: account });
  return r.balances.find((x) => x.bucket === 'wallet');
}

async function ledgerSum(cp, account) {
  const page = await cp.adminCall('QueryLedger', { account_id: account, page_size: 1000 });
  let sum = 0n;
  let usage = 0;
  for (const e of page.entries) {
    if (e.bucket === 'wallet') sum += BigInt(e.amount_nano || 0);
    if (e.kind === 'LEDGER_KIND_USAGE' && BigInt(e.amount_nano || 0) !== 0n) usage++;
  }
  return { sum, usage, rows: page.entries };
}

for (const backend of ['lmdb', 'etcd']) {
  describe(`spend leases on ${backend}`, () => {
    let mock, etcd, cp, cpPort, cpDir, ids, chId;
    const agents = [];

    async function newAgent() {
      const a = await startAgent(null, { noSnapshot: true,
        args: ['--cp', `127.0.0.1:${cpPort}`, '--enroll-token', ENROLL_TOKEN] });
      await until(async () => (await fetch(`${a.url}/readyz`)).status === 200,
        { timeoutMs: 15000, what: 'the agent to receive its snapshot over Sync' });
      return a;
    }

    // what one small request costs (max_tokens 16), measured on an account with room
    async function oneCost() {
      const probe = await account(`probe-${Math.random().toString(36).slice(2, 8)}`, 100n * 1000000000n);
      const pc = new OpenAI({ apiKey: probe.secret, baseURL: agents[1].base, maxRetries: 0 });
      const { response } = await pc.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
      return BigInt((await agents[1].waitRecord(response.headers.get('x-request-id'))).cost_nano);
    }

    async function keySpent(acct, keyId) {
      const page = await cp.adminCall('QueryLedger', { account_id: acct, key_id: keyId, page_size: 1000 });
      return page.entries.reduce((a, e) => a - BigInt(e.amount_nano || 0), 0n);
    }

    async function account(name, topup, keyExtra = {}, acctExtra = {}) {
      const acct = await cp.adminCall('CreateAccount', { account: {
        name, billing_mode: 'BILLING_MODE_PREPAID', ...acctExtra,
        buckets: [{ name: 'credit', currency: 'USD' }, { name: 'wallet', currency: 'USD' }],
      } });
      if (topup > 0n) {
        await cp.adminCall('TopUp', { account_id: acct.id, bucket: 'wallet', amount_nano: String(topup),
          currency: 'USD', idempotency_key: `seed-${name}`, reason: 'e2e' });
      }
      const k = await cp.adminCall('CreateKey', { key: { account_id: acct.id, name, expose_cost: true, ...keyExtra } });
      // every agent must know the key before it is used
      for (const a of agents) {
        if (a.dead) continue;
        await until(async () => (await fetch(`${a.base}/models`, { headers: { authorization: `Bearer ${k.secret}` } })).status === 200,
          { timeoutMs: 10000, what: 'the key to reach the agent' });
      }
      return { id: acct.id, secret: k.secret, keyId: k.key.id };
    }

    // Waits until every live agent installed configuration revision `rev` or later.
    async function synced(rev) {
      for (const a of agents) {
        if (a.dead) continue;
        await until(async () => {
          const t = await (await fetch(`${a.metricsUrl}/metrics`)).text();
          const m = /^tollgate_agent_config_revision (\d+)/m.exec(t);
          return m && BigInt(m[1]) >= BigInt(rev);
        }, { timeoutMs: 10000, what: `configuration revision ${rev} at the agent` });
      }
    }

    async function drained() {
      for (const a of agents) {
        if (a.dead) continue;
        await until(() => a.outbox().length === 0, { timeoutMs: 20000, what: 'the outbox to drain' });
      }
    }

    before(async () => {
      mock = await startMock();
      cpPort = await freePort();
      cpDir = tmpdir('tg-lease-cp-');
      const extra = ['--listen', `127.0.0.1:${cpPort}`, '--lease-ttl-ms', String(TTL_MS)];
      if (backend === 'etcd') {
        etcd = await startEtcd();
        cp = await startCp({ store: `etcd:${etcd.url}`, dataDir: cpDir, extraArgs: extra });
      } else {
        cp = await startCp({ dataDir: cpDir, extraArgs: extra });
      }
      ids = await seed(cp, { topup: 0n });
      const ch = await cp.adminCall('CreateChannel', { channel: {
        name: 'mock', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`,
        route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-upstream-mock',
      } });
      chId = ch.id;
      await cp.adminCall('PutRoute', { route: { model: 'gpt-4o', tiers: [{ targets: [{ channel_id: ch.id }] }] } });
      const dead = await freePort(); // nothing listens: every attempt fails
      const dch = await cp.adminCall('CreateChannel', { channel: {
        name: 'dead', provider: 'PROVIDER_TYPE_OPENAI', base_url: `http://127.0.0.1:${dead}/v1`,
        route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-upstream-dead',
      } });
      await cp.adminCall('PublishPriceCard', { card: { id: 'card-dead', currency: 'USD', note: 'e2e',
        entries: [{ model: 'gpt-dead', input_per_mtok_nano: '2500000333', output_per_mtok_nano: '10000000007' }] } });
      await cp.adminCall('PutRoute', { route: { model: 'gpt-dead', tiers: [{ targets: [{ channel_id: dch.id }] }] } });
      // a provider that ignores max_tokens and streams 400 tokens whatever the cap
      const rch = await cp.adminCall('CreateChannel', { channel: {
        name: 'runaway', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`,
        route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-upstream-runaway',
        extra_headers: [{ name: 'x-mock-scenario', value: 'tokens=400;ignore-max-tokens' }],
      } });
      await cp.adminCall('PublishPriceCard', { card: { id: 'card-runaway', currency: 'USD', note: 'e2e',
        entries: [{ model: 'gpt-runaway', input_per_mtok_nano: '2500000333', output_per_mtok_nano: '10000000007' }] } });
      await cp.adminCall('PutRoute', { route: { model: 'gpt-runaway', tiers: [{ targets: [{ channel_id: rch.id }] }] } });
      // the same on an Anthropic channel: message_start's output_tokens is a running 1, the
      // final count comes in message_delta, which a cut stream never reaches
      const ach = await cp.adminCall('CreateChannel', { channel: {
        name: 'runaway-anthropic', provider: 'PROVIDER_TYPE_ANTHROPIC', base_url: `${mock.url}/v1`,
        route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-ant-runaway',
        extra_headers: [{ name: 'x-mock-scenario', value: 'tokens=400;ignore-max-tokens' }],
      } });
      await cp.adminCall('PublishPriceCard', { card: { id: 'card-runaway-anthropic', currency: 'USD', note: 'e2e',
        entries: [{ model: 'claude-runaway', input_per_mtok_nano: '3000000333', output_per_mtok_nano: '15000000007' }] } });
      await cp.adminCall('PutRoute', { route: { model: 'claude-runaway', tiers: [{ targets: [{ channel_id: ach.id }] }] } });
      // a slow stream (for a client that leaves mid-stream), a slow head (first-byte timeout), and a
      // route whose failing primary falls back to a cheaper tier
      const mk = async (name, scenario, extra = {}) => (await cp.adminCall('CreateChannel', { channel: {
        name, provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`, route_type: 'ROUTE_TYPE_POOLED',
        credential: 'sk-upstream-x', extra_headers: [{ name: 'x-mock-scenario', value: scenario }], ...extra } })).id;
      const slow = await mk('slow', 'tokens=400;itl=20');
      const slowhead = await mk('slowhead', 'latency=3000', { first_byte_timeout_ms: 300 });
      const broken = await mk('broken', 'status=500');
      await cp.adminCall('PublishPriceCard', { card: { id: 'card-paths', currency: 'USD', note: 'e2e', entries: [
        { model: 'gpt-slow', input_per_mtok_nano: '2500000333', output_per_mtok_nano: '10000000007' },
        { model: 'gpt-slowhead', input_per_mtok_nano: '2500000333', output_per_mtok_nano: '10000000007' },
        // the fallback's price: the primary tier is dear, the backup cheap
        { model: 'gpt-fallback', input_per_mtok_nano: '2500000333', output_per_mtok_nano: '10000000007' }] } });
      await cp.adminCall('PutRoute', { route: { model: 'gpt-slow', tiers: [{ targets: [{ channel_id: slow }] }] } });
      await cp.adminCall('PutRoute', { route: { model: 'gpt-slowhead', tiers: [{ targets: [{ channel_id: slowhead }] }] } });
      await cp.adminCall('PutRoute', { route: { model: 'gpt-fallback',
        policy: { max_attempts: 3, fallback_enabled: true, retry_on_5xx: true },
        tiers: [{ targets: [{ channel_id: broken }] }, { targets: [{ channel_id: chId }] }] } });
      for (let i = 0; i < 3; i++) agents.push(await newAgent());
    });

    after(async () => {
      for (const a of agents) if (!a.dead) await a.stop();
      await cp?.stop();
      await mock?.stop();
      await etcd?.proc.stop();
    });

    test('a burst of 60 over three agents never spends past a wallet that covers ~10 requests', async () => {
      // what one request costs, measured on an account with room
      const probe = await account('probe', 100n * 1000000000n);
      const pc = new OpenAI({ apiKey: probe.secret, baseURL: agents[0].base, maxRetries: 0 });
      const { response } = await pc.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
      const one = BigInt((await agents[0].waitRecord(response.headers.get('x-request-id'))).cost_nano);
      assert.ok(one > 0n);
      const budget = one * 10n;
      const acct = await account('burst', budget);
      const clients = agents.map((a) => new OpenAI({ apiKey: acct.secret, baseURL: a.base, maxRetries: 0, timeout: 20000 }));
      const results = await Promise.all(Array.from({ length: 60 }, (_, i) =>
        clients[i % 3].chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 })
          .then(() => 200, (e) => e)));
      const served = results.filter((r) => r === 200).length;
      const refused = results.filter((r) => r !== 200);
      for (const e of refused) {
        assert.equal(e.status, 402, `${e.status} ${e.message}`);
        assert.equal(e.code, 'insufficient_quota');
        assert.match(e.message, /`wallet` balance/);
      }
      assert.ok(served >= 1, 'some requests fit the budget');
      assert.ok(refused.length >= 40, `the budget covers about 10, ${served} were served`);
      await drained();
      const bal = await balances(cp, acct.id);
      const { sum, usage } = await ledgerSum(cp, acct.id);
      const spentNow = budget - BigInt(bal.balance_nano);
      assert.ok(BigInt(bal.balance_nano) >= 0n, `balance ${bal.balance_nano} went below zero`);
      assert.ok(spentNow <= budget);
      assert.equal(usage, served, 'one charged row per served request');
      // the ledger explains the balance to the nano-unit: top-up minus usage
      assert.equal(sum, BigInt(bal.balance_nano));
      // the live holds never exceed what is left (once the agents' next
      // renewals have declared what they still owe after the acks)
      await until(async () => {
        const b = await balances(cp, acct.id);
        return BigInt(b.reserved_nano || 0) <= BigInt(b.balance_nano);
      }, { timeoutMs: TTL_MS * 2, what: 'the holds to fit the balance' });
      // refusals are receipts too: zero cost, the reason
      await until(async () => {
        const { rows } = await ledgerSum(cp, acct.id);
        return rows.filter((e) => e.record && e.record.client_status === 402).length === refused.length;
      }, { timeoutMs: 15000, what: 'every refusal to be a receipt in the ledger' });
    });

    test('without max_tokens the default output cap is reserved: a wallet too small for it refuses up front', async () => {
      const acct = await account('nocap', 2000000n);
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[1].base, maxRetries: 0 });
      const err = await c.chat.completions.create({ model: 'gpt-4o', messages }).then(() => null, (e) => e);
      assert.ok(err, 'refused');
      assert.equal(err.status, 402);
      await drained();
      assert.equal(BigInt((await balances(cp, acct.id)).balance_nano), 2000000n, 'nothing spent');
    });

    test('failed upstream calls release their reservations exactly: the budget is still all there', async () => {
      // a wallet that covers a couple of reservations: leaked ones would refuse the last request
      const probe = new OpenAI({ apiKey: (await account('probe2', 100n * 1000000000n)).secret, baseURL: agents[2].base, maxRetries: 0 });
      const { response } = await probe.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
      const one = BigInt((await agents[2].waitRecord(response.headers.get('x-request-id'))).reserved_nano);
      const acct = await account('fails', one * 3n);
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[2].base, maxRetries: 0, timeout: 10000 });
      for (let i = 0; i < 8; i++) {
        const e = await c.chat.completions.create({ model: 'gpt-dead', messages, max_tokens: 16 }).then(() => null, (x) => x);
        assert.ok(e?.status === 502 || e?.status === 503, `the dead channel fails (${e?.status})`); // 503 once its breaker opens
      }
      const ok = await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
      const rec = await agents[2].waitRecord(ok.response.headers.get('x-request-id'));
      assert.ok(BigInt(rec.reserved_nano) >= BigInt(rec.cost_nano), 'the cost stays within its reservation');
      await drained();
      const bal = await balances(cp, acct.id);
      assert.equal(BigInt(bal.balance_nano), one * 3n - BigInt(rec.cost_nano), 'only the served request was charged');
      const { sum } = await ledgerSum(cp, acct.id);
      assert.equal(sum, BigInt(bal.balance_nano));
    });

    test('every way a request ends gives its reservation back: client gone mid-stream, timeout, fallback, policy refusal', async () => {
      const one = await oneCost();
      // room for about three reservations at a time: any leak shows as a refusal below
      const acct = await account('paths', one * 12n, { model_allowlist: ['gpt-slow*', 'gpt-fallback'] });
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[1].base, maxRetries: 0, timeout: 10000 });
      for (let round = 0; round < 4; round++) {
        // the client leaves in the middle of a stream
        const ac = new AbortController();
        const stream = await c.chat.completions.create({ model: 'gpt-slow', messages, max_tokens: 16, stream: true },
          { signal: ac.signal });
        try { for await (const _ of stream) { ac.abort(); } } catch { /* aborted */ }
        // the upstream does not answer in time
        const t = await c.chat.completions.create({ model: 'gpt-slowhead', messages, max_tokens: 16 }).then(() => null, (e) => e);
        assert.equal(t?.status, 504);
        // the primary fails, the backup serves
        await c.chat.completions.create({ model: 'gpt-fallback', messages, max_tokens: 16 });
        // refused by policy before any reservation
        const p = await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).then(() => null, (e) => e);
        assert.equal(p?.status, 403);
      }
      // nothing leaked: the last reservations still fit, and every charge is in the ledger
      for (let i = 0; i < 3; i++) await c.chat.completions.create({ model: 'gpt-fallback', messages, max_tokens: 16 });
      await drained();
      const bal = await balances(cp, acct.id);
      const { sum } = await ledgerSum(cp, acct.id);
      assert.equal(sum, BigInt(bal.balance_nano));
      assert.ok(BigInt(bal.balance_nano) >= 0n);
    });

    test('control plane unreachable: agents spend what their leases hold, then refuse new spend (fail closed)', async () => {
      const acct = await account('offline', 100n * 1000000000n);
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[2].base, maxRetries: 0, timeout: 10000 });
      await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }); // takes a lease
      await cp.stop('SIGKILL'); // at once: a graceful stop takes longer than this test's short TTL
      // still served from the lease right away
      await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 });
      // after the lease's use-by time (3/4 of the TTL) new spend is refused
      const e = await until(async () => {
        try { await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }); return null; } catch (x) { return x; }
      }, { timeoutMs: TTL_MS * 3, intervalMs: 200, what: 'the agent to fail closed' });
      assert.equal(e.status, 503);
      assert.equal(e.code, 'spend_control_unavailable');
      cp = await startCp({ store: backend === 'etcd' ? `etcd:${etcd.url}` : undefined, dataDir: cpDir,
        extraArgs: ['--listen', `127.0.0.1:${cpPort}`, '--lease-ttl-ms', String(TTL_MS)] });
      // back: served again once a lease is granted, and what was spent offline settles
      await until(async () => {
        try { await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }); return true; } catch { return false; }
      }, { timeoutMs: 20000, what: 'serving after the control plane is back' });
      await drained();
      const { sum } = await ledgerSum(cp, acct.id);
      assert.equal(sum, BigInt((await balances(cp, acct.id)).balance_nano));
    });

    test('a bounded offline allowance: past the lapsed lease an agent spends at most the policy\'s allowance, then fails closed', async () => {
      const one = await oneCost();
      const pol = await cp.adminCall('PutPolicy', { policy: { offline_allowance_nano: String(one * 5n) } });
      const acct = await account('allowance', 100n * 1000000000n);
      const a = agents[2];
      await synced(pol.revision);
      const c = new OpenAI({ apiKey: acct.secret, baseURL: a.base, maxRetries: 0, timeout: 10000 });
      await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 });
      await cp.stop('SIGKILL');
      await new Promise((r) => setTimeout(r, TTL_MS)); // the lease lapses (use-by: 3/4 of the TTL)
      let served = 0;
      let refusal = null;
      for (let i = 0; i < 20 && !refusal; i++) {
        try { await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }); served++; } catch (e) { refusal = e; }
      }
      assert.ok(refusal, 'the allowance ran out');
      assert.equal(refusal.status, 503);
      assert.ok(served >= 1, 'the allowance was spent');
      // reservations are upper estimates (about twice a request's cost here): at most five estimates' worth
      assert.ok(served <= 5, `${served} served past the lapsed lease`);
      cp = await startCp({ store: backend === 'etcd' ? `etcd:${etcd.url}` : undefined, dataDir: cpDir,
        extraArgs: ['--listen', `127.0.0.1:${cpPort}`, '--lease-ttl-ms', String(TTL_MS)] });
      await cp.adminCall('PutPolicy', { policy: { offline_allowance_nano: '0' } });
      await until(async () => {
        try { await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }); return true; } catch { return false; }
      }, { timeoutMs: 20000, what: 'serving after the control plane is back' });
      await drained();
      const { sum } = await ledgerSum(cp, acct.id);
      assert.equal(sum, BigInt((await balances(cp, acct.id)).balance_nano), 'what was spent offline is charged, once');
    });

    test('a cap times n past what can be pre-authorized is refused with 400, never served unreserved', async () => {
      const acct = await account('overflow', 10000000n);
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[1].base, maxRetries: 0 });
      const e = await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 9007199254740992, n: 2048 })
        .then(() => null, (x) => x);
      assert.equal(e?.status, 400);
      assert.equal(e.code, 'max_tokens_too_large');
      await drained();
      assert.equal(BigInt((await balances(cp, acct.id)).balance_nano), 10000000n, 'nothing spent');
    });

    test('a request larger than half of what is left is served when the budget covers it (and a pause-key limit does not pause)', async () => {
      const acct = await account('bigafter', 10000000n, { spend_limits: [
        { window: 'LIMIT_WINDOW_DAY', limit_nano: '10000000', currency: 'USD', action: 'LIMIT_ACTION_PAUSE_KEY' }] });
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[1].base, maxRetries: 0 });
      await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 125 });
      // reserves about 0.0072 USD of the ~0.0098 left on the wallet and on the day's limit
      await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 700 });
      const k = await cp.adminCall('GetKey', { id: acct.keyId });
      assert.equal(k.status, 'KEY_STATUS_ACTIVE');
    });

    test('a stream from a provider that ignores max_tokens ends at its reservation, billed within it', async () => {
      const acct = await account('runaway', 100n * 1000000000n);
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[2].base, maxRetries: 0, timeout: 15000 });
      const { data: stream, response } = await c.chat.completions
        .create({ model: 'gpt-runaway', messages, max_tokens: 20, stream: true }).withResponse();
      let text = '';
      let finish = null;
      for await (const chunk of stream) {
        for (const ch of chunk.choices) {
          text += ch.delta?.content || '';
          if (ch.finish_reason) finish = ch.finish_reason;
        }
      }
      assert.equal(finish, 'length', 'ended cleanly with the length stop reason');
      const rec = await agents[2].waitRecord(response.headers.get('x-request-id'));
      assert.equal(rec.finish_reason, 'length');
      assert.ok(Number(rec.usage.output_tokens) <= 20, `billed ${rec.usage.output_tokens} output tokens`);
      assert.ok(BigInt(rec.cost_nano) <= BigInt(rec.reserved_nano), 'the cost stays within the reservation');
      assert.ok(text.split(' ').length < 100, `the stream was cut (got ${text.split(' ').length} words of 400)`);
      await drained();
      const { sum } = await ledgerSum(cp, acct.id);
      assert.equal(sum, BigInt((await balances(cp, acct.id)).balance_nano));
    });

    // An Anthropic channel that ignores max_tokens, read by an Anthropic client (passthrough) and an
    // OpenAI client (converted): the gateway's cut is a clean end (no error event after it), the attempt
    // is not a stream cut, and output is billed for what was produced (never message_start's running 1).
    async function assertAnthropicCut(rec, acct, finish) {
      assert.equal(rec.finish_reason, finish);
      assert.equal(rec.attempts.length, 1);
      assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_NONE', rec.attempts[0].error_message);
      assert.match(rec.attempts[0].error_message, /ended at its reservation/);
      const out = Number(rec.usage.output_tokens);
      assert.ok(out >= 10 && out <= 20, `billed ${out} output tokens for a stream cut at 20`);
      assert.ok(rec.usage.provider_output_partial, 'the provider\'s final count never came: flagged');
      assert.ok(BigInt(rec.cost_nano) <= BigInt(rec.reserved_nano), 'the cost stays within the reservation');
      await drained();
      const { sum, rows } = await ledgerSum(cp, acct.id);
      const bal = await balances(cp, acct.id);
      assert.equal(sum, BigInt(bal.balance_nano));
      const row = rows.find((e) => e.kind === 'LEDGER_KIND_USAGE' && e.record?.request_id === rec.request_id);
      assert.ok(row, 'the record is settled');
      assert.equal(-BigInt(row.amount_nano), BigInt(rec.cost_nano));
    }

    test('an Anthropic stream that ignores max_tokens, Anthropic client: a clean end at the reservation, output billed', async () => {
      const acct = await account('runaway-ant', 100n * 1000000000n);
      const c = new Anthropic({ apiKey: acct.secret, baseURL: agents[2].url, maxRetries: 0, timeout: 15000 });
      const { data: stream, response } = await c.messages
        .create({ model: 'claude-runaway', max_tokens: 20, messages, stream: true }).withResponse();
      const types = [];
      let text = '';
      let stop = null;
      let outSeen = 0;
      for await (const ev of stream) { // an error event would throw here
        types.push(ev.type);
        if (ev.type === 'content_block_delta') text += ev.delta.text ?? '';
        if (ev.type === 'message_delta') { stop = ev.delta.stop_reason; outSeen = ev.usage.output_tokens; }
      }
      assert.ok(outSeen >= 10 && outSeen <= 20, `the closing usage says ${outSeen} output tokens`);
      assert.equal(types.at(-1), 'message_stop');
      assert.equal(types.filter((t) => t === 'message_stop').length, 1);
      assert.equal(stop, 'max_tokens');
      assert.ok(text.split(' ').length < 100, `the stream was cut (got ${text.split(' ').length} words of 400)`);
      await assertAnthropicCut(await agents[2].waitRecord(response.headers.get('x-request-id')), acct, 'max_tokens');
    });

    test('an Anthropic stream that ignores max_tokens, OpenAI client: a clean end at the reservation, output billed', async () => {
      const acct = await account('runaway-ant-oa', 100n * 1000000000n);
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[2].base, maxRetries: 0, timeout: 15000 });
      const { data: stream, response } = await c.chat.completions
        .create({ model: 'claude-runaway', messages, max_tokens: 20, stream: true }).withResponse();
      let text = '';
      let finish = null;
      for await (const chunk of stream) { // an error chunk would throw here
        for (const ch of chunk.choices) {
          text += ch.delta?.content || '';
          if (ch.finish_reason) finish = ch.finish_reason;
        }
      }
      assert.equal(finish, 'length');
      assert.ok(text.split(' ').length < 100, `the stream was cut (got ${text.split(' ').length} words of 400)`);
      await assertAnthropicCut(await agents[2].waitRecord(response.headers.get('x-request-id')), acct, 'length');
    });

    test('a key\'s daily spend limit holds across three agents: 429 with Retry-After past it, GetKeyLimits explains it', async () => {
      const one = await oneCost();
      const limit = one * 5n;
      const acct = await account('daily', 100n * 1000000000n,
        { spend_limits: [{ window: 'LIMIT_WINDOW_DAY', limit_nano: String(limit), currency: 'USD' }] });
      const clients = agents.filter((a) => !a.dead).map((a) => new OpenAI({ apiKey: acct.secret, baseURL: a.base, maxRetries: 0, timeout: 20000 }));
      const results = await Promise.all(Array.from({ length: 30 }, (_, i) =>
        clients[i % clients.length].chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 })
          .then(() => 200, (e) => e)));
      const served = results.filter((r) => r === 200).length;
      const refused = results.filter((r) => r !== 200);
      assert.ok(served >= 1 && refused.length >= 20, `${served} served`);
      for (const e of refused) {
        assert.equal(e.status, 429, `${e.status} ${e.message}`);
        assert.equal(e.code, 'spend_limit_exceeded');
        assert.match(e.message, /day spend limit/);
        assert.ok(Number(e.headers.get('retry-after')) > 0, 'Retry-After until the window resets');
      }
      await drained();
      const spent = await keySpent(acct.id, acct.keyId);
      assert.ok(spent <= limit, `spent ${spent} past the limit ${limit}`);
      const { limits } = await cp.adminCall('GetKeyLimits', { key_id: acct.keyId });
      assert.equal(limits.length, 1);
      const l = limits[0];
      assert.equal(l.window, 'LIMIT_WINDOW_DAY');
      assert.equal(BigInt(l.limit_nano), limit);
      assert.equal(BigInt(l.spent_nano), spent, 'the window\'s spend is exactly the key\'s charged rows');
      assert.equal(BigInt(l.remaining_nano), limit - spent - BigInt(l.reserved_nano));
      const now = Date.now() * 1000;
      assert.ok(Number(l.resets_at_us) > now && Number(l.resets_at_us) <= now + 86400e6);
      // the operator's view: tollctl key limits
      const out = await new Promise((resolve, reject) => execFile(bin('cli/tollctl'), ['key', 'limits', acct.keyId],
        { env: { PATH: process.env.PATH, TOLLGATE_SERVER: `127.0.0.1:${cpPort}`, TOLLGATE_TOKEN: ADMIN_TOKEN }, timeout: 20000 },
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}: ${stderr}`)) : resolve(stdout))));
      assert.match(out, /SCOPE\s+WINDOW\s+LIMIT\s+SPENT\s+HELD\s+REMAINING/);
      assert.match(out, /key\s+LIMIT_WINDOW_DAY|key\s+day/);
    });

    test('an account-wide monthly limit holds across its keys and three agents, and GetKeyLimits shows it', async () => {
      const one = await oneCost();
      const limit = one * 6n;
      const acct = await account('acctwide', 100n * 1000000000n, {},
        { spend_limits: [{ window: 'LIMIT_WINDOW_MONTH', limit_nano: String(limit), currency: 'USD' }] });
      // a second key of the same account: the limit counts both
      const k2 = await cp.adminCall('CreateKey', { key: { account_id: acct.id, name: 'acctwide-2', expose_cost: true } });
      for (const a of agents) {
        if (a.dead) continue;
        await until(async () => (await fetch(`${a.base}/models`, { headers: { authorization: `Bearer ${k2.secret}` } })).status === 200,
          { timeoutMs: 10000, what: 'the second key to reach the agent' });
      }
      const live = agents.filter((a) => !a.dead);
      const clients = [];
      for (const a of live) for (const key of [acct.secret, k2.secret]) clients.push(new OpenAI({ apiKey: key, baseURL: a.base, maxRetries: 0, timeout: 20000 }));
      const results = await Promise.all(Array.from({ length: 36 }, (_, i) =>
        clients[i % clients.length].chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 })
          .then(() => 200, (e) => e)));
      const served = results.filter((r) => r === 200).length;
      const refused = results.filter((r) => r !== 200);
      assert.ok(served >= 1 && refused.length >= 24, `${served} served`);
      for (const e of refused) {
        assert.equal(e.status, 429, `${e.status} ${e.message}`);
        assert.equal(e.code, 'spend_limit_exceeded');
        assert.match(e.message, /account's month spend limit/);
        assert.ok(Number(e.headers.get('retry-after')) > 0, 'Retry-After until the month resets');
      }
      await drained();
      const { sum } = await ledgerSum(cp, acct.id);
      assert.equal(sum, BigInt((await balances(cp, acct.id)).balance_nano), 'ledger rows add up to the balance');
      const spent = 100n * 1000000000n - sum;
      assert.ok(spent > 0n && spent <= limit, `the account spent ${spent} against its limit ${limit}`);
      // both keys see the account's window; its spend is both keys' rows
      for (const keyId of [acct.keyId, k2.key.id]) {
        const { limits } = await cp.adminCall('GetKeyLimits', { key_id: keyId });
        const l = limits.find((x) => x.kind === 'account');
        assert.ok(l, `GetKeyLimits of ${keyId} lists the account's limit`);
        assert.equal(l.id, acct.id);
        assert.equal(l.window, 'LIMIT_WINDOW_MONTH');
        assert.equal(BigInt(l.spent_nano), spent, 'the window\'s spend is exactly the account\'s charged rows');
      }
      // the key holder's own view lists it too
      const view = await (await fetch(`${live[0].base}/tollgate/key`, { headers: { authorization: `Bearer ${k2.secret}` } })).json();
      assert.ok(view.limits.some((l) => l.scope === 'account'), JSON.stringify(view.limits));
    });

    test('a limit with the pause-key action pauses the key once reached; every agent refuses it with the reason', async () => {
      const one = await oneCost();
      const acct = await account('pauser', 100n * 1000000000n, { spend_limits: [
        { window: 'LIMIT_WINDOW_DAY', limit_nano: String(one * 2n), currency: 'USD', action: 'LIMIT_ACTION_PAUSE_KEY' }] });
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[1].base, maxRetries: 0 });
      let refused = null;
      for (let i = 0; i < 10 && !refused; i++) {
        refused = await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).then(() => null, (e) => e);
      }
      assert.ok(refused, 'the limit was reached');
      await drained();
      const key = await until(async () => {
        const k = await cp.adminCall('GetKey', { id: acct.keyId });
        return k.status === 'KEY_STATUS_PAUSED' ? k : null;
      }, { timeoutMs: 10000, what: 'the key to be paused' });
      assert.match(key.status_reason, /day spend limit/);
      for (const a of agents.filter((x) => !x.dead)) {
        const e = await until(async () => {
          const x = await new OpenAI({ apiKey: acct.secret, baseURL: a.base, maxRetries: 0 }).chat.completions
            .create({ model: 'gpt-4o', messages, max_tokens: 16 }).then(() => null, (y) => y);
          return x && x.status === 403 ? x : null;
        }, { timeoutMs: 5000, what: 'the agent to refuse the paused key' });
        assert.equal(e.code, 'key_paused');
        assert.match(e.message, /spend limit/);
      }
    });

    test('limit windows begin at midnight in the account\'s time zone, on the agent and the control plane alike', async () => {
      const bad = await cp.adminCall('CreateAccount', { account: { name: 'badzone', billing_mode: 'BILLING_MODE_PREPAID',
        time_zone: 'Europe/Paris', buckets: [{ name: 'wallet', currency: 'USD' }] } }).then(() => null, (e) => e);
      assert.match(bad?.details || '', /account\.time_zone/);
      const acct = await account('zoned', 100n * 1000000000n, { spend_limits: [
        { window: 'LIMIT_WINDOW_DAY', limit_nano: '1000000000', currency: 'USD' }] }, { time_zone: '+14:00' });
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[1].base, maxRetries: 0 });
      // served: the agent's scope (its window start at +14:00) is the one the control plane grants on
      const { response } = await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }).withResponse();
      const rec = await agents[1].waitRecord(response.headers.get('x-request-id'));
      assert.ok(rec.lease_scopes.some((x) => x.startsWith(`key/${acct.keyId}/day/`)));
      await drained();
      const { limits } = await cp.adminCall('GetKeyLimits', { key_id: acct.keyId });
      assert.equal(BigInt(limits[0].spent_nano), BigInt(rec.cost_nano));
      const resets = BigInt(limits[0].resets_at_us);
      assert.equal((resets + 14n * 3600n * 1000000n) % (86400n * 1000000n), 0n, 'the day ends at midnight +14:00');
    });

    test('window rollover: spend settled for yesterday does not count against today\'s limit, a total limit counts both', async () => {
      const acct = await account('rollover', 100n * 1000000000n, { spend_limits: [
        { window: 'LIMIT_WINDOW_DAY', limit_nano: '1000000000', currency: 'USD' },
        { window: 'LIMIT_WINDOW_TOTAL', limit_nano: '5000000000', currency: 'USD' }] });
      const fa = new FakeAgent(cp, 'rollover');
      await fa.enroll();
      const rec = (startedUs) => ({ ...fa.record(ids), key_id: acct.keyId, project_id: '', account_id: acct.id,
        started_at_us: startedUs, finished_at_us: startedUs });
      const now = Date.now() * 1000;
      const yesterday = rec(now - 86400e6);
      const today = rec(now);
      await fa.report(fa.signed([yesterday, today]));
      const cost = costOf({ input_tokens: 1000, output_tokens: 500 });
      const { limits } = await cp.adminCall('GetKeyLimits', { key_id: acct.keyId });
      const day = limits.find((l) => l.window === 'LIMIT_WINDOW_DAY');
      const total = limits.find((l) => l.window === 'LIMIT_WINDOW_TOTAL');
      assert.equal(BigInt(day.spent_nano), cost, 'only today\'s record counts in today\'s window');
      assert.equal(BigInt(total.spent_nano), 2n * cost, 'the total window counts both');
    });

    test('a run stops cleanly at its budget, other runs go on; the run receipt shows budget, spent and remaining', async () => {
      const one = await oneCost();
      const acct = await account('runner', 100n * 1000000000n);
      const run = `run-${backend}-${Date.now()}`;
      const rb = await cp.adminCall('PutRunBudget', { budget: { run_id: run, account_id: acct.id,
        max_spend_nano: String(one * 3n), currency: 'USD' } });
      await synced(rb.revision);
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[1].base, maxRetries: 0,
        defaultHeaders: { 'X-Tollgate-Run': run } });
      // the budget reaches the agents over Sync; then the run spends until it is refused
      let served = 0;
      let refusal = null;
      for (let i = 0; i < 40 && !refusal; i++) {
        try {
          await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 });
          served++;
        } catch (e) { refusal = e; }
      }
      assert.ok(refusal, `the run was never refused (${served} served)`);
      assert.equal(refusal.status, 402);
      assert.equal(refusal.code, 'run_budget_exceeded');
      const other = new OpenAI({ apiKey: acct.secret, baseURL: agents[1].base, maxRetries: 0,
        defaultHeaders: { 'X-Tollgate-Run': `${run}-other` } });
      await other.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 });
      await drained();
      const rr = await cp.adminCall('GetRunReceipt', { run_id: run });
      const bs = rr.budget_state;
      assert.ok(bs, 'the receipt carries the budget state');
      assert.equal(BigInt(bs.limit_nano), one * 3n);
      const charged = rr.records.reduce((a, r) => a + BigInt(r.cost_nano || 0), 0n);
      assert.equal(BigInt(bs.spent_nano), charged, 'spent is exactly the run\'s charged requests');
      assert.ok(charged <= one * 3n, `spent ${charged} past the run budget`);
      assert.equal(BigInt(bs.remaining_nano), one * 3n - charged - BigInt(bs.reserved_nano));
    });

    test('examples/research-run.mjs: a multi-step client stops cleanly at its run budget and prints its receipt', { skip: backend !== 'lmdb' }, async () => {
      const one = await oneCost();
      const acct = await account('research', 100n * 1000000000n);
      const run = `research-e2e-${Date.now()}`;
      const rb = await cp.adminCall('PutRunBudget', { budget: { run_id: run, account_id: acct.id,
        max_spend_nano: String(one * 6n), currency: 'USD' } });
      await synced(rb.revision);
      const out = await new Promise((resolve, reject) => execFile(process.execPath,
        [path.join(ROOT, 'examples', 'research-run.mjs')], { timeout: 60000, env: { ...process.env,
          OPENAI_BASE_URL: agents[1].base, OPENAI_API_KEY: acct.secret, TOLLGATE_RUN: run, TOLLGATE_MODELS: 'gpt-4o',
          TOLLGATE_CP: `127.0.0.1:${cpPort}`, TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN } },
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout))));
      assert.match(out, /run budget reached at step/);
      assert.match(out, /stopped by its budget/);
      assert.match(out, /receipt: \d+ requests/);
      assert.match(out, /budget 0\.\d+ USD: spent/);
    });

    test('a Responses stream from a provider that ignores max_output_tokens ends at its reservation as response.incomplete', async () => {
      const acct = await account('runaway-resp', 100n * 1000000000n);
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[2].base, maxRetries: 0, timeout: 15000 });
      const { data: stream, response } = await c.responses
        .create({ model: 'gpt-runaway', input: 'hi', max_output_tokens: 20, stream: true }).withResponse();
      let text = '';
      let last = null;
      for await (const ev of stream) {
        if (ev.type === 'response.output_text.delta') text += ev.delta;
        last = ev;
      }
      assert.equal(last.type, 'response.incomplete');
      assert.equal(last.response.incomplete_details.reason, 'max_output_tokens');
      assert.ok(text.split(' ').length < 100, 'cut before the provider\'s 400 tokens');
      const rec = await agents[2].waitRecord(response.headers.get('x-request-id'));
      assert.ok(Number(rec.usage.output_tokens) <= 20);
      assert.ok(BigInt(rec.cost_nano) <= BigInt(rec.reserved_nano));
    });

    test('kill -9 of an agent holding a lease: after the TTL its hold is gone and the budget is whole again', async () => {
      const acct = await account('killed', 100n * 1000000000n);
      const victim = agents[0];
      const c = new OpenAI({ apiKey: acct.secret, baseURL: victim.base, maxRetries: 0 });
      await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 });
      const held = await balances(cp, acct.id);
      assert.ok(BigInt(held.reserved_nano) > 0n, 'the agent holds part of the wallet');
      await victim.proc.stop('SIGKILL');
      victim.dead = true;
      // another agent spends after the TTL: its grant drops the dead hold
      await new Promise((r) => setTimeout(r, TTL_MS + 500));
      const c2 = new OpenAI({ apiKey: acct.secret, baseURL: agents[1].base, maxRetries: 0 });
      await c2.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 });
      await until(async () => {
        const b = await balances(cp, acct.id);
        const now = BigInt(Date.now()) * 1000n;
        const live = (b.holds || []).filter((h) => BigInt(h.expires_at_us) > now);
        return live.length >= 1 && live.every((h) => h.agent_id !== (held.holds || [])[0]?.agent_id) ? b : null;
      }, { timeoutMs: 10000, what: 'the killed agent\'s hold to be gone' });
    });

    test('a restarted control plane keeps the holds that are out, and agents go on serving', async () => {
      const acct = await account('restart', 100n * 1000000000n);
      const c = new OpenAI({ apiKey: acct.secret, baseURL: agents[1].base, maxRetries: 0, timeout: 15000 });
      await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 });
      await drained();
      const before = await balances(cp, acct.id);
      assert.ok(BigInt(before.reserved_nano) > 0n);
      await cp.stop();
      cp = await startCp({ store: backend === 'etcd' ? `etcd:${etcd.url}` : undefined, dataDir: cpDir,
        extraArgs: ['--listen', `127.0.0.1:${cpPort}`, '--lease-ttl-ms', String(TTL_MS)] });
      const after = await balances(cp, acct.id);
      assert.equal(after.reserved_nano, before.reserved_nano, 'the holds were kept in the store');
      assert.equal(after.balance_nano, before.balance_nano);
      // the agents reconnect and keep serving (their holds renewed, not granted twice)
      await until(async () => {
        try { await c.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 }); return true; } catch { return false; }
      }, { timeoutMs: 20000, what: 'serving after the restart' });
      await drained();
      const b = await balances(cp, acct.id);
      const { sum } = await ledgerSum(cp, acct.id);
      assert.equal(sum, BigInt(b.balance_nano));
      assert.ok(BigInt(b.reserved_nano) <= BigInt(b.balance_nano));
    });
  });
}
