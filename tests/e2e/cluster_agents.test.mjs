// Cluster mode as an operator runs it: two tollgate-cp replicas on one real
// etcd, two real tollgate-agents each enrolled with a different replica
// (--cp lists both, its own first), mockllm upstream, the official openai
// SDK. Every answer's usage record settles exactly once whichever replica
// the agent reaches (a follower forwards usage reports to the leader): the
// ledger holds each record once and the wallet moved by the sum of the
// records' costs, to the nano-unit. Then, under load, the leader is killed
// (SIGKILL: its lease lapses by itself): the other replica takes over, the
// agent whose first replica died moves to the next, and both agents' records
// settle within a bounded time, none twice. Last, a leader stopped with
// SIGTERM hands over at once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent } from '../../agent/testing/agent.mjs';
import { startCp, startEtcd, seed, balance, ENROLL_TOKEN } from './cp_agent_lib.mjs';
import { tmpdir, until } from './lib/proc.mjs';

const messages = [{ role: 'user', content: 'Count my tokens, please.' }];
let mock, etcd, store, cpA, cpB, ids, secret;
const agents = [];
const procs = [];
const started = Date.now();
const log = (m) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${m}`);

async function role(cp) {
  const m = await cp.metrics();
  const names = /tollgate_cp_leader\{node="([^"]*)"\} 1/.exec(m);
  return { leader: /^tollgate_cp_is_leader 1$/m.test(m), names: names ? names[1] : '' };
}

async function agentMetrics(a) {
  return (await fetch(`${a.metricsUrl}/metrics`)).text();
}

function gauge(text, name) {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

async function newAgent(cps) {
  const a = await startAgent(null, { noSnapshot: true,
    args: ['--cp', cps.map((c) => c.addr).join(','), '--enroll-token', ENROLL_TOKEN, '--region', `r${agents.length}`] });
  // the process keeps only its last 64 KiB of output: collect every usage
  // record line (--log-records) as it comes
  a.recs = new Map();
  for (const st of [a.proc.child.stdout, a.proc.child.stderr]) {
    let buf = '';
    st.on('data', (d) => {
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop();
      for (const l of lines) {
        if (!l.includes('"comp":"usage"')) continue;
        const r = JSON.parse(JSON.parse(l).record);
        a.recs.set(r.record_id, r);
      }
    });
  }
  await until(async () => (await fetch(`${a.url}/readyz`)).status === 200,
    { timeoutMs: 15000, what: 'the agent to receive its snapshot over Sync' });
  return a;
}

// Every usage row of the account in the ledger of cp: record id -> amount.
async function ledger(cp) {
  const rows = new Map();
  const dup = [];
  let token = '';
  for (let i = 0; i < 200; i++) {
    const p = await cp.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000, page_token: token });
    for (const e of p.entries) {
      if (e.kind !== 'LEDGER_KIND_USAGE') continue;
      if (rows.has(e.entry_id)) dup.push(e.entry_id);
      rows.set(e.entry_id, BigInt(e.amount_nano || 0));
    }
    token = p.next_page_token;
    if (!token) break;
  }
  return { rows, dup };
}

// All the records the agents spooled (their --log-records lines).
function allRecords() {
  const m = new Map();
  for (const a of agents) for (const [id, r] of a.recs) m.set(id, r);
  return m;
}

// The ledger of cp holds every spooled record once, and the wallet moved by
// their costs exactly.
async function settledExactlyOnce(cp, wallet0, what) {
  const recs = allRecords();
  let want = 0n;
  for (const r of recs.values()) want += BigInt(r.cost_nano || 0);
  const { rows, dup } = await until(async () => {
    const l = await ledger(cp);
    return [...recs.keys()].every((id) => l.rows.has(id)) && l;
  }, { timeoutMs: 30000, what: `${what}: every record in the ledger` });
  assert.deepEqual(dup, [], `${what}: no record twice`);
  assert.equal(rows.size, recs.size, `${what}: ledger usage rows == records`);
  let moved = 0n;
  for (const v of rows.values()) moved -= v;
  assert.equal(moved, want, `${what}: the rows add up to the records' costs`);
  assert.equal(wallet0 - (await balance(cp, ids.account)), want, `${what}: the wallet moved by the costs, to the nano-unit`);
  return { records: recs.size, cost: want };
}

async function drained(a, timeoutMs = 20000) {
  await until(() => a.outbox().length === 0, { timeoutMs, intervalMs: 100, what: 'the outbox to drain' });
}

// n requests through agent a; returns how many were answered 200.
async function burst(a, n, conc = 4) {
  const oc = new OpenAI({ apiKey: secret, baseURL: a.base, maxRetries: 0 });
  let ok = 0;
  let next = 0;
  await Promise.all(Array.from({ length: conc }, async () => {
    while (next < n) {
      next++;
      await oc.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 });
      ok++;
    }
  }));
  return ok;
}

before(async () => {
  mock = await startMock();
  etcd = await startEtcd();
  procs.push(etcd.proc);
  store = `etcd:${etcd.url}`;
  cpA = await startCp({ store, nodeId: 'cp-a' });
  await until(async () => (await role(cpA)).leader, { timeoutMs: 10000, what: 'cp-a to lead' });
  cpB = await startCp({ store, nodeId: 'cp-b' });
  await until(async () => (await role(cpB)).names === 'cp-a', { timeoutMs: 5000, what: 'cp-b to see the leader' });
  ids = await seed(cpA, { topup: 1000n * 1000000000n });
  const ch = await cpA.adminCall('CreateChannel', { channel: {
    name: 'mock', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`,
    route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-upstream-mock',
  } });
  await cpA.adminCall('PutRoute', { route: { model: 'gpt-4o', tiers: [{ targets: [{ channel_id: ch.id }] }] } });
  const k = await cpA.adminCall('CreateKey', { key: { account_id: ids.account, name: 'cluster' } });
  secret = k.secret;
  // agent 0 enrolls with the leader, agent 1 with the follower
  agents.push(await newAgent([cpA, cpB]));
  agents.push(await newAgent([cpB, cpA]));
  for (const a of agents) {
    await until(async () => (await fetch(`${a.base}/models`, { headers: { authorization: `Bearer ${secret}` } })).status === 200,
      { timeoutMs: 10000, what: 'the key to reach the agent' });
  }
});

after(async () => {
  for (const a of agents) await a.proc.stop('SIGKILL');
  for (const c of [cpA, cpB]) await c?.proc.stop('SIGKILL');
  await mock?.stop();
  for (const p of procs.reverse()) await p.stop('SIGKILL');
});

test('each agent settles through its own replica, leader or follower, exactly once', async () => {
  const wallet0 = 1000n * 1000000000n;
  const n0 = await burst(agents[0], 20);
  const n1 = await burst(agents[1], 20);
  assert.equal(n0 + n1, 40);
  for (const a of agents) await drained(a);
  const s = await settledExactlyOnce(cpB, wallet0, 'both replicas');
  assert.equal(s.records, 40);
  assert.match(await cpB.metrics(), /^tollgate_cp_usage_forwarded_total [1-9]\d*$/m, 'the follower forwarded');
  const m1 = await agentMetrics(agents[1]);
  assert.equal(gauge(m1, 'tollgate_agent_cp_connected'), 1);
  assert.ok(gauge(m1, 'tollgate_agent_cp_last_ack_age_seconds') >= 0, 'an ack was seen');
  assert.ok(gauge(m1, 'tollgate_agent_config_revision') > 0);
  assert.ok(gauge(m1, 'tollgate_agent_lease_requests_total') > 0, 'leases through the follower');
  assert.equal(gauge(m1, 'tollgate_agent_outbox_records'), 0);
});

test('kill -9 of the leader under load: the follower takes over, both agents settle within seconds, none twice', async () => {
  const wallet0 = 1000n * 1000000000n;
  let loading = true;
  const answered = [0, 0];
  const failed = [];
  const load = agents.map(async (a, i) => {
    const oc = new OpenAI({ apiKey: secret, baseURL: a.base, maxRetries: 0 });
    await Promise.all([0, 1].map(async () => {
      while (loading) {
        try {
          await oc.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 16 });
          answered[i]++;
        } catch (e) {
          failed.push(`${i}: ${e.status} ${e.message}`);
        }
      }
    }));
  });
  await new Promise((r) => setTimeout(r, 1500));
  const tKill = Date.now();
  await cpA.proc.stop('SIGKILL');
  log('leader cp-a killed');
  // the first batch each agent gets acknowledged after the kill
  const stall = [null, null];
  let takeover = null;
  await until(async () => {
    if (takeover === null && (await role(cpB)).leader) takeover = Date.now() - tKill;
    for (let i = 0; i < 2; i++) {
      if (stall[i] !== null) continue;
      const age = gauge(await agentMetrics(agents[i]), 'tollgate_agent_cp_last_ack_age_seconds');
      if (age >= 0 && Date.now() - age * 1000 > tKill + 50) stall[i] = Date.now() - tKill;
    }
    return takeover !== null && stall[0] !== null && stall[1] !== null;
  }, { timeoutMs: 20000, intervalMs: 100, what: 'both agents to settle again after the kill' });
  await new Promise((r) => setTimeout(r, 1000));
  loading = false;
  await Promise.all(load);
  const tEnd = Date.now();
  for (const a of agents) await drained(a);
  const drain = Date.now() - tEnd;
  log(`takeover ${takeover} ms; first ack after the kill: agent0 (first cp was the leader) ${stall[0]} ms, ` +
    `agent1 ${stall[1]} ms; drained ${drain} ms after the load; answered ${answered}, failed ${failed.length}`);
  assert.ok(takeover < 6000, `takeover took ${takeover} ms`);
  assert.ok(stall[0] < 8000 && stall[1] < 8000, `settlement stalled ${stall} ms`);
  // agents wait on a live replica during the election, not in a backoff
  assert.ok(Math.max(...stall) < takeover + 2500, `settled ${stall} ms after the kill, leader after ${takeover} ms`);
  assert.deepEqual(failed, [], 'no request failed while the control plane failed over');
  await settledExactlyOnce(cpB, wallet0, 'after the kill');
  // the spend leases out at the kill live on in the store: both agents hold a
  // slice of the wallet through the survivor, together never more than is left
  await until(async () => {
    const b = (await cpB.adminCall('GetBalances', { account_id: ids.account })).balances.find((x) => x.bucket === 'wallet');
    const now = BigInt(Date.now()) * 1000n;
    const live = (b.holds || []).filter((h) => BigInt(h.expires_at_us) > now);
    return new Set(live.map((h) => h.agent_id)).size === 2 && BigInt(b.reserved_nano) <= BigInt(b.balance_nano);
  }, { timeoutMs: 15000, what: 'both agents to hold leases that fit the wallet after the failover' });
  const m0 = await agentMetrics(agents[0]);
  assert.match(m0, new RegExp(`^tollgate_agent_cp_connected\\{cp="${cpB.addr}"\\} 1$`, 'm'), 'agent 0 moved to cp-b');
  assert.ok(gauge(m0, 'tollgate_agent_cp_switches_total') >= 1);
});

test('a leader stopped with SIGTERM hands over at once', async () => {
  const wallet0 = 1000n * 1000000000n;
  // cp-a comes back on its old address (the agents' --cp lists name it)
  cpA = await startCp({ store, nodeId: 'cp-a', dataDir: tmpdir('tg-cp-a2-'), extraArgs: ['--listen', cpA.addr] });
  await until(async () => (await role(cpA)).names === 'cp-b', { timeoutMs: 10000, what: 'cp-a to follow cp-b' });
  const t0 = Date.now();
  const stopped = cpB.proc.stop('SIGTERM');
  await until(async () => (await role(cpA)).leader, { timeoutMs: 10000, intervalMs: 50, what: 'cp-a to take over' });
  const handover = Date.now() - t0;
  const exit = await stopped;
  const stopMs = Date.now() - t0;
  log(`SIGTERM of leader cp-b: cp-a settles after ${handover} ms; cp-b exited after ${stopMs} ms`);
  assert.equal(exit.code, 0);
  assert.ok(handover < 2500, `handover took ${handover} ms`);
  const n = (await burst(agents[0], 10)) + (await burst(agents[1], 10));
  assert.equal(n, 20);
  for (const a of agents) await drained(a);
  await settledExactlyOnce(cpA, wallet0, 'after the handover');
});
