// Settled-log retention on etcd: the leader deletes settled batches older
// than --settled-retention-s from the store (etcd keeps only small, hot
// state), while the LMDB ledger keeps every row and the batch markers still
// answer resends. Checked by reading etcd directly through its JSON gateway.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { until } from './lib/proc.mjs';
import { FakeAgent, seed, startCp, startEtcd } from './cp_agent_lib.mjs';

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
  await until(async () => {
    try { await a.report(a.signed([], 1000)); return true; } catch (e) { if (/not the settling leader/.test(e.details)) return false; throw e; }
  }, { timeoutMs: 10000, what: 'leadership' });
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
  // the ledger still has every row, and a resend is still recognised
  const page = await cp.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
  for (const id of all) assert.ok(page.entries.some((e) => e.entry_id === id), `row ${id} kept`);
  const r = await a.report(reqs[0]);
  assert.equal(r.duplicate_batch, true);
  assert.ok(await countPrefix(etcd.url, 'tg/settle/batch/') >= 4, 'markers are not subject to the settled-log retention');
});
