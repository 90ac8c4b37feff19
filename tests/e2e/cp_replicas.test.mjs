// Two control-plane replicas on one real etcd: one wins the leader lease and
// settles; the other forwards ReportUsage to it (exactly once whichever
// replica a batch reaches), serves Sync, and tails the settled log into its
// own ledger. When the leader
// is killed (SIGKILL: no lease revoke), the other takes over within seconds,
// answers resends of batches the old leader settled from their markers, and
// settles new ones; its ledger holds every row.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { until } from './lib/proc.mjs';
import { FakeAgent, balance, call, costOf, grpc, ledgerRows, seed, startCp, startEtcd } from './cp_agent_lib.mjs';

const procs = [];
after(async () => {
  for (const p of procs.reverse()) await p.stop('SIGKILL');
});

// Who settles, from a replica's /metrics: is it the leader, and whom does
// it name as the leader.
async function role(cp) {
  const m = await cp.metrics();
  const names = /tollgate_cp_leader\{node="([^"]*)"\} 1/.exec(m);
  return { leader: /^tollgate_cp_is_leader 1$/m.test(m), names: names ? names[1] : '' };
}

async function ledgerIds(cp, account) {
  return new Set((await ledgerRows(cp, account)).keys());
}

test('two replicas: one settles, the other serves Sync and takes over when the leader dies', async () => {
  const etcd = await startEtcd();
  procs.push(etcd.proc);
  const store = `etcd:${etcd.url}`;
  const cpA = await startCp({ store, nodeId: 'cp-a' });
  procs.push(cpA);
  await until(async () => (await role(cpA)).leader, { timeoutMs: 10000, what: 'cp-a to lead' });
  const cpB = await startCp({ store, nodeId: 'cp-b' });
  procs.push(cpB);
  await until(async () => (await role(cpB)).names === 'cp-a', { timeoutMs: 5000, what: 'cp-b to name the leader' });
  assert.equal((await role(cpB)).leader, false);

  const ids = await seed(cpA);
  // the follower serves Sync from the same store
  const agent = new FakeAgent(cpB);
  await agent.enroll();
  const s = await agent.sync();
  await until(() => s.messages.length >= 1, { timeoutMs: 5000, what: 'a snapshot from the follower' });
  assert.ok(s.messages[0].m.snapshot.accounts.some((x) => x.id === ids.account));
  s.stream.cancel();
  // a proof over cp-b's nonce, captured and replayed at cp-a (which never
  // issued that nonce) or at cp-b again, is refused on both replicas
  const captured = await agent.proof(undefined, { cp: cpB });
  const q = { account_id: ids.account, bucket: 'wallet', requested_nano: '0', reset: true, proof: captured };
  const refused = (e) => e.code === grpc.status.UNAUTHENTICATED && /nonce/.test(e.details);
  await assert.rejects(call(cpA.agentSvc, 'Lease', q), refused, 'cp-a never issued the nonce');
  await call(cpB.agentSvc, 'Lease', q);
  await assert.rejects(call(cpB.agentSvc, 'Lease', q), refused, 'used once at cp-b');

  // settle through the follower, which forwards to the leader; a resend to
  // the leader is answered from the marker: once, whatever the path
  agent.cp = cpA;
  const before = await balance(cpA, ids.account);
  let want = 0n;
  const all = [];
  const sent = [];
  for (let b = 0; b < 5; b++) {
    const recs = [];
    for (let i = 0; i < 40; i++) {
      const r = agent.record(ids, { tokens: { input_tokens: 500 + b * 40 + i, output_tokens: i } });
      want += costOf(r.usage);
      recs.push(r);
      all.push(r.record_id);
    }
    const req = agent.signed(recs);
    const r = await agent.report(req, cpB);
    assert.equal(r.settled, 40);
    assert.equal((await agent.report(req, cpA)).duplicate_batch, true);
    sent.push(req);
  }
  assert.equal(await balance(cpB, ids.account), before - want);
  assert.match(await cpB.metrics(), /^tollgate_cp_usage_forwarded_total [5-9]$/m);
  // the follower's ledger caught up by tailing the settled log
  await until(async () => {
    const have = await ledgerIds(cpB, ids.account);
    return all.every((id) => have.has(id));
  }, { timeoutMs: 10000, what: 'the follower ledger to hold every row' });

  // kill the leader without revoking its lease
  const t0 = Date.now();
  await cpA.proc.stop('SIGKILL');
  await until(async () => (await role(cpB)).leader, { timeoutMs: 15000, intervalMs: 100, what: 'cp-b to take over' });
  const takeover = Date.now() - t0;
  assert.ok(takeover < 8000, `takeover took ${takeover} ms`);

  // resends of the old leader's batches: answered from the markers
  for (const req of sent) {
    const r = await agent.report(req, cpB);
    assert.equal(r.duplicate_batch, true);
  }
  // and new settlement on the new leader
  const more = [];
  for (let i = 0; i < 30; i++) {
    const r = agent.record(ids, { tokens: { input_tokens: 9000 + i, output_tokens: 5 } });
    want += costOf(r.usage);
    more.push(r);
    all.push(r.record_id);
  }
  const r = await agent.report(agent.signed(more), cpB);
  assert.equal(r.settled, 30);
  assert.equal(await balance(cpB, ids.account), before - want);
  const have = await ledgerIds(cpB, ids.account);
  assert.ok(all.every((id) => have.has(id)), 'the new leader ledger holds every usage row');
  const page = await cpB.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
  const usage = page.entries.filter((e) => e.kind === 'LEDGER_KIND_USAGE' && e.batch_agent_id === agent.id);
  assert.equal(usage.length, all.length, 'each row once');
  assert.equal(usage.reduce((sum, e) => sum - BigInt(e.amount_nano), 0n), want);
  console.log(`takeover after SIGKILL of the leader: ${takeover} ms`);
});

test('a replica down while etcd compacted its history re-reads the settled log and misses nothing', async () => {
  const etcd = await startEtcd();
  procs.push(etcd.proc);
  const store = `etcd:${etcd.url}`;
  const cpA = await startCp({ store, nodeId: 'cp-a' });
  procs.push(cpA);
  await until(async () => (await role(cpA)).leader, { timeoutMs: 10000, what: 'cp-a to lead' });
  const cpB = await startCp({ store, nodeId: 'cp-b' });
  procs.push(cpB);
  const ids = await seed(cpA);
  const agent = new FakeAgent(cpA);
  await agent.enroll();
  const all = [];
  const send = async () => {
    const recs = [agent.record(ids), agent.record(ids)];
    all.push(...recs.map((r) => r.record_id));
    assert.equal((await agent.report(agent.signed(recs))).settled, 2);
  };
  await send();
  await until(async () => (await ledgerIds(cpB, ids.account)).has(all[0]),
    { timeoutMs: 10000, what: 'cp-b to tail the first batch' });
  // cp-b goes down; settlement goes on; etcd compacts away the history cp-b
  // would resume its watch from
  const dataB = cpB.dataDir;
  await cpB.stop();
  for (let i = 0; i < 3; i++) await send();
  const st = await (await fetch(`${etcd.url}/v3/kv/range`, { method: 'POST', body: JSON.stringify({ key: Buffer.from('x').toString('base64') }) })).json();
  const rev = Number(st.header.revision);
  const c = await fetch(`${etcd.url}/v3/kv/compaction`, { method: 'POST', body: JSON.stringify({ revision: String(rev), physical: true }) });
  assert.ok(c.ok, 'etcd compacted');
  const cpB2 = await startCp({ store, nodeId: 'cp-b', dataDir: dataB });
  procs.push(cpB2);
  await until(async () => {
    const have = await ledgerIds(cpB2, ids.account);
    return all.every((id) => have.has(id));
  }, { timeoutMs: 15000, what: 'the restarted replica to hold every row after the compaction' });
  assert.match(cpB2.proc.output(), /settled-log watch: .*compact.*re-reading the whole log/i);
});
