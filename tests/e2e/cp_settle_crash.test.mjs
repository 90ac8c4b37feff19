// Exactly-once settlement across a control-plane crash between the store
// commit and the acknowledgement (TG_CP_CRASH_AT=after_commit makes
// tollgate-cp _exit(99) right there), on LMDB and on a real etcd: the agent
// gets no answer and resends to the restarted control plane, which answers
// from the batch's marker. Balances move once; the ledger holds every row
// (appended by the tailer from the settled log after the restart).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { tmpdir, until } from './lib/proc.mjs';
import { FakeAgent, balance, costOf, grpc, seed, startCp, startEtcd } from './cp_agent_lib.mjs';

async function leaderReady(cp) {
  const a = new FakeAgent(cp, 'probe');
  await a.enroll();
  await until(async () => {
    try { await a.report(a.signed([])); return true; } catch (e) { if (/not the settling leader/.test(e.details)) return false; throw e; }
  }, { timeoutMs: 15000, what: 'the restarted control plane to settle' });
}

for (const backend of ['lmdb', 'etcd']) describe(backend, () => {
  const ctx = {};
  before(async () => {
    ctx.dataDir = tmpdir('tg-cp-crash-');
    if (backend === 'etcd') ctx.etcd = await startEtcd();
    ctx.store = ctx.etcd ? `etcd:${ctx.etcd.url}` : undefined;
  });
  after(async () => {
    await ctx.cp?.stop('SIGKILL');
    await ctx.etcd?.proc.stop('SIGKILL');
  });

  test(`${backend}: killed after the commit, before the ack: the resend is charged once`, async () => {
    let cp = await startCp({ store: ctx.store, dataDir: ctx.dataDir, nodeId: 'cp-crash' });
    await leaderReady(cp);
    const ids = await seed(cp);
    const a = new FakeAgent(cp);
    await a.enroll();
    const before = await balance(cp, ids.account);
    assert.equal((await cp.stop()).code, 0, 'clean SIGTERM exit');

    // restart with the crash point armed
    cp = await startCp({ store: ctx.store, dataDir: ctx.dataDir, nodeId: 'cp-crash', env: { TG_CP_CRASH_AT: 'after_commit' } });
    await leaderReady(cp).catch(() => {}); // the probe's own empty batch crashes it too
    const exit0 = await cp.proc.exited;
    assert.equal(exit0.code, 99, 'the probe batch hit the crash point');
    cp = await startCp({ store: ctx.store, dataDir: ctx.dataDir, nodeId: 'cp-crash', env: { TG_CP_CRASH_AT: 'after_commit' } });
    a.cp = cp;
    const recs = [];
    for (let i = 0; i < 25; i++) recs.push(a.record(ids, { tokens: { input_tokens: 1000 + i, output_tokens: 77 * i } }));
    const want = recs.reduce((s, r) => s + costOf(r.usage), 0n);
    const req = a.signed(recs);
    await until(async () => {
      try { await a.report(req); return false; } catch (e) {
        if (/not the settling leader/.test(e.details)) return false;
        return true; // the connection died under the call
      }
    }, { timeoutMs: 15000, what: 'the crash during settlement' });
    const exit = await cp.proc.exited;
    assert.equal(exit.code, 99, 'tollgate-cp exited at the crash point');

    // restart normally and resend the same signed batch
    cp = await startCp({ store: ctx.store, dataDir: ctx.dataDir, nodeId: 'cp-crash' });
    ctx.cp = cp;
    a.cp = cp;
    await leaderReady(cp);
    const r = await a.report(req);
    assert.equal(r.duplicate_batch, true, 'answered from the marker');
    assert.equal(r.settled, 25);
    assert.equal(await balance(cp, ids.account), before - want, 'charged exactly once');
    // the ledger has every row, once
    const page = await cp.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
    const mine = page.entries.filter((e) => recs.some((x) => x.record_id === e.entry_id));
    assert.equal(mine.length, 25);
    assert.equal(mine.reduce((s, e) => s - BigInt(e.amount_nano), 0n), want);

    // a top-up killed the same way is applied once too
    await cp.stop();
    cp = await startCp({ store: ctx.store, dataDir: ctx.dataDir, nodeId: 'cp-crash', env: { TG_CP_CRASH_AT: 'after_commit' } });
    const topup = { account_id: ids.account, bucket: 'wallet', amount_nano: '1000000', currency: 'USD',
      idempotency_key: 'crash-topup', reason: 'crash test' };
    await until(async () => {
      try { await cp.adminCall('TopUp', topup); return false; } catch (e) {
        if (/not the settling leader/.test(e.details)) return false;
        return e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.INTERNAL || e.code === grpc.status.CANCELLED;
      }
    }, { timeoutMs: 15000, what: 'the crash during the top-up' });
    assert.equal((await cp.proc.exited).code, 99);
    cp = await startCp({ store: ctx.store, dataDir: ctx.dataDir, nodeId: 'cp-crash' });
    ctx.cp = cp;
    await leaderReady(cp);
    const t = await cp.adminCall('TopUp', topup);
    assert.equal(t.duplicate, true);
    assert.equal(await balance(cp, ids.account), before - want + 1000000n);
    // the audit event committed with the money (same transaction), so the
    // crash between commit and answer cannot lose it; the resend adds none
    const oid = `${ids.account}/wallet`;
    const audit = await cp.adminCall('QueryAudit', { object_type: 'balance', object_id: oid, page_size: 100 });
    const evs = audit.events.filter((e) => JSON.parse(e.after_json).idempotency_key === 'crash-topup');
    assert.equal(evs.length, 1, 'exactly one audit event for the crashed top-up');
    const after = JSON.parse(evs[0].after_json);
    assert.equal(after.kind, 'LEDGER_KIND_TOPUP');
    assert.equal(after.amountNano ?? after.amount_nano, '1000000');
    assert.equal(evs[0].method, 'TopUp');
    // ...and its revision is the balance change's own: the ledger row's entry id matches
    const rows = await cp.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
    const row = rows.entries.find((e) => e.idempotency_key === 'crash-topup');
    assert.ok(row, 'the top-up row is in the ledger');
    assert.equal(after.entryId ?? after.entry_id, row.entry_id);
  });
});
