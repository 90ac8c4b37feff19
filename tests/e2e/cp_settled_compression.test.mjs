// Settled-log values on a real etcd, before and after --settled-compression:
// a leader started with etcd's default (none: older replicas may still tail
// the log) writes its batch as the packed page, the same replica restarted
// with `zstd` writes a zstd frame, and a new replica that reads the whole
// log from the start builds a ledger with every row of both, each amount,
// balance and chain hash the leader's, the rows summing to the balance's
// movement to the nano-unit. Then the leader settles a batch of 1,000
// records (a 470 KB page, two of which fill a group) and the new replica's
// tailer appends it from the compressed value too.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { until } from './lib/proc.mjs';
import { FakeAgent, balance, costOf, ledgerRows, seed, startCp, startEtcd, waitLeader } from './cp_agent_lib.mjs';

const procs = [];
after(async () => {
  for (const p of procs.reverse()) await p.stop('SIGKILL');
});

const ZSTD_MAGIC = '28b52ffd';

// The settled-log values in etcd (JSON gateway), in key order.
async function settledValues(url) {
  const prefix = Buffer.from('tg/settle/log/');
  const end = Buffer.from(prefix);
  end[end.length - 1] += 1;
  const r = await fetch(`${url}/v3/kv/range`, { method: 'POST',
    body: JSON.stringify({ key: prefix.toString('base64'), range_end: end.toString('base64') }) });
  return ((await r.json()).kvs || []).map((kv) => Buffer.from(kv.value, 'base64'));
}

test('a log written with and without compression is read whole by a new replica', async () => {
  const etcd = await startEtcd();
  procs.push(etcd.proc);
  const store = `etcd:${etcd.url}`;
  let cpA = await startCp({ store, nodeId: 'cp-a' });
  procs.push(cpA);
  const agent = new FakeAgent(cpA);
  await agent.enroll();
  await waitLeader(cpA, agent);
  const ids = await seed(cpA);
  const before = await balance(cpA, ids.account);
  let want = 0n;
  const batch = (n) => {
    const recs = [];
    for (let i = 0; i < n; i++) {
      const r = agent.record(ids, { tokens: { input_tokens: 300 + i, output_tokens: 7 + (i % 50) } });
      want += costOf(r.usage);
      recs.push(r);
    }
    return recs;
  };
  assert.equal((await agent.report(agent.signed(batch(3)))).settled, 3);
  const plain = await settledValues(etcd.url);
  assert.ok(plain.length >= 2, 'the top-up and the batch are in the log');
  for (const v of plain) assert.notEqual(v.subarray(0, 4).toString('hex'), ZSTD_MAGIC, 'written as the page');

  // the same replica, restarted with compression on
  const dataDir = cpA.dataDir;
  const first = await cpA.stop();
  assert.equal(first.code, 0, `tollgate-cp exits 0 on SIGTERM (under ASan: no leak):\n${cpA.proc.output().slice(-3000)}`);
  cpA = await startCp({ store, nodeId: 'cp-a', dataDir, extraArgs: ['--settled-compression', 'zstd'] });
  procs.push(cpA);
  agent.cp = cpA;
  await waitLeader(cpA, agent);
  assert.equal((await agent.report(agent.signed(batch(4)))).settled, 4);
  const mixed = await settledValues(etcd.url);
  assert.equal(mixed.length, plain.length + 1);
  assert.equal(mixed[mixed.length - 1].subarray(0, 4).toString('hex'), ZSTD_MAGIC, 'written as a zstd frame');

  // a new replica reads both from the start
  const cpB = await startCp({ store, nodeId: 'cp-b' });
  procs.push(cpB);
  const moved = before - await balance(cpA, ids.account);
  assert.equal(moved, want, 'charged exactly the records');
  const check = async (n) => {
    const a = await ledgerRows(cpA, ids.account);
    let b;
    await until(async () => (b = await ledgerRows(cpB, ids.account)).size === a.size,
      { timeoutMs: 10000, intervalMs: 100, what: `cp-b's ledger to hold the ${a.size} rows of cp-a's` });
    let usage = 0n;
    for (const [id, e] of a) {
      const f = b.get(id);
      assert.ok(f, `row ${id} on cp-b`);
      assert.equal(f.amount_nano, e.amount_nano, `${id}: amount`);
      assert.equal(f.balance_after_nano, e.balance_after_nano, `${id}: balance after`);
      assert.equal(Buffer.from(f.hash).toString('hex'), Buffer.from(e.hash).toString('hex'), `${id}: the same chain`);
      if (e.kind === 'LEDGER_KIND_USAGE') usage -= BigInt(e.amount_nano);
    }
    assert.equal(usage, want, 'the usage rows sum to the balance movement');
    assert.equal([...a.values()].filter((e) => e.kind === 'LEDGER_KIND_USAGE').length, n);
  };
  await check(7);

  // a group-sized batch, compressed, through the new replica's tailer
  assert.equal((await agent.report(agent.signed(batch(1000)))).settled, 1000);
  assert.equal(before - await balance(cpA, ids.account), want);
  await check(1007);
  // both exit cleanly: under the ASan build a leak or a memory error in
  // the compressing leader or the decompressing replica fails here
  for (const cp of [cpB, cpA]) {
    const out = cp.proc.output();
    assert.equal((await cp.stop()).code, 0, `${cp.nodeId} exits 0 on SIGTERM:\n${out.slice(-3000)}`);
  }
});
