// Settled-log retention: the leader deletes settled batches older than
// --settled-retention-s from the store, and their batch markers with them
// (the store stays bounded), while the LMDB ledger keeps every row: a
// batch resent after its marker is gone is recognised record by record from
// the ledger and charged nothing. On etcd checked by reading etcd directly
// through its JSON gateway; on LMDB by the answers and the balance.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { until } from './lib/proc.mjs';
import { FakeAgent, balance, seed, startCp, startEtcd, waitLeader } from './cp_agent_lib.mjs';

const procs = [];
after(async () => {
  for (const p of procs.reverse()) await p.stop('SIGKILL');
});

const b64 = (s) => Buffer.from(s).toString('base64');
async function countPrefix(url, prefix) {
  const end = Buffer.from(prefix);
  end[end.length - 1] += 1;
  const r = await fetch(`${url}/v3/kv/range`, { method: 'POST',
    body: JSON.stringify({ key: b64(prefix), range_end: end.toString('base64'), count_only: true }) });
  return Number((await r.json()).count || 0);
}

test('settled batches leave etcd after the retention window; ledger rows and markers stay', async () => {
  const etcd = await startEtcd();
  procs.push(etcd.proc);
  const cp = await startCp({ store: `etcd:${etcd.url}`, nodeId: 'cp-ret', env: { TG_CP_RETAIN_EVERY_MS: '300' },
    extraArgs: ['--settled-retention-s', '2'] });
  procs.push(cp);
  const a = new FakeAgent(cp);
  await a.enroll();
  await waitLeader(cp, a);
  const ids = await seed(cp);
  const reqs = [];
  const all = [];
  for (let b = 0; b < 4; b++) {
    const recs = [a.record(ids), a.record(ids)];
    all.push(...recs.map((r) => r.record_id));
    reqs.push(a.signed(recs));
    assert.equal((await a.report(reqs[b])).settled, 2);
  }
  assert.ok(await countPrefix(etcd.url, 'tg/settle/log/') >= 5, 'the top-up and the batches are in the settled log');
  await until(async () => (await countPrefix(etcd.url, 'tg/settle/log/')) === 0,
    { timeoutMs: 10000, intervalMs: 200, what: 'retention to empty the settled log' });
  // the markers leave with them; the ledger still has every row
  await until(async () => (await countPrefix(etcd.url, 'tg/settle/batch/')) === 0,
    { timeoutMs: 10000, intervalMs: 200, what: 'retention to delete the batch markers' });
  const page = await cp.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
  for (const id of all) assert.ok(page.entries.some((e) => e.entry_id === id), `row ${id} kept`);
  // a resend after its marker is gone: every record a duplicate, nothing charged
  const before = await balance(cp, ids.account);
  const r = await a.report(reqs[0]);
  assert.equal(r.duplicate_batch, false);
  assert.equal(r.settled, 0);
  assert.equal(r.duplicate_records, 2);
  assert.equal(await balance(cp, ids.account), before);
  const again = await cp.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
  assert.equal(again.entries.length, page.entries.length, 'no row added');
});

test('on LMDB (default retention 60 s there): a resend after retention is still not charged twice', async () => {
  const cp = await startCp({ nodeId: 'cp-ret-lmdb', env: { TG_CP_RETAIN_EVERY_MS: '300' },
    extraArgs: ['--settled-retention-s', '1'] });
  procs.push(cp);
  const a = new FakeAgent(cp);
  await a.enroll();
  await waitLeader(cp, a);
  const ids = await seed(cp);
  const req = a.signed([a.record(ids), a.record(ids)]);
  assert.equal((await a.report(req)).settled, 2);
  assert.equal((await a.report(req)).duplicate_batch, true, 'the marker answers at first');
  const before = await balance(cp, ids.account);
  // once retention removed the marker, the ledger's record ids answer
  await until(async () => !(await a.report(req)).duplicate_batch,
    { timeoutMs: 15000, intervalMs: 300, what: 'retention to delete the marker' });
  const r = await a.report(req);
  assert.equal(r.settled, 0);
  assert.equal(r.duplicate_records, 2);
  assert.equal(await balance(cp, ids.account), before);
});
