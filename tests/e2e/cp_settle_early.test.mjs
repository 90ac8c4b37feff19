// Settlement's early duplicate check (controlplane/settle.c early_check):
// a batch's record ids are looked up in the ledger before it queues for the
// commit lock, and under the lock only the commits since that lookup are
// checked. The window that could let a record settle twice is a batch
// carrying the same records that commits, and reaches the ledger, while
// the first batch waits between its lookup and the lock. The test hook
// TG_CP_TEST_HOOK_DIR holds one chosen batch in that window until the
// test lets it go: the held batch looks the records up (not settled yet),
// then the other batch with the same records is sent and acknowledged (an
// ack means this replica's ledger has its rows), then the held one goes on.
// Each record is charged once, to the nano-unit, on both stores, and the
// held batch's duplicates were found among the commits after its lookup.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FakeAgent, balance, costOf, startSettling } from './cp_agent_lib.mjs';
import { until } from './lib/proc.mjs';

function metric(text, name) {
  const m = new RegExp(`^${name} (\\d+)`, 'm').exec(text);
  assert.ok(m, `${name} in /metrics`);
  return Number(m[1]);
}

for (const backend of ['lmdb', 'etcd']) describe(backend, () => {
  const ctx = {};
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tg-early-'));
  before(() => startSettling(ctx, backend, 'cp-early', { TG_CP_TEST_HOOK_DIR: dir }));
  after(async () => {
    await ctx.cp?.stop();
    await ctx.etcd?.proc.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  test(`${backend}: the same records in two batches, the second committed inside the first's wait: charged once`, async () => {
    const cp = ctx.cp;
    const a = new FakeAgent(cp);
    await a.enroll();
    const before = await balance(cp, ctx.ids.account);
    const m0 = await cp.metrics();
    const early0 = metric(m0, 'tollgate_cp_settle_early_checks_total');
    const pend0 = metric(m0, 'tollgate_cp_settle_early_pending_duplicates_total');
    let want = 0n;
    const all = new Set();
    const ROUNDS = 3;
    for (let round = 0; round < ROUNDS; round++) {
      const recs = [];
      for (let i = 0; i < 5; i++) recs.push(a.record(ctx.ids, { tokens: { input_tokens: 1000 + round * 7 + i, output_tokens: 3 } }));
      want += recs.reduce((s, r) => s + costOf(r.usage), 0n);
      for (const r of recs) all.add(r.record_id);
      const s1 = a.signed(recs);
      const s2 = a.signed(recs);
      const seq2 = a.seq;
      const hold = path.join(dir, `${seq2}.hold`), held = path.join(dir, `${seq2}.held`);
      writeFileSync(hold, '');
      try {
        // the second looks the records up (none settled) and is held
        const second = a.report(s2);
        second.catch(() => {});
        await until(() => existsSync(held), { intervalMs: 10, what: `batch ${seq2} held after its early check` });
        // the first settles them and is acknowledged: the ledger has them
        const r1 = await a.report(s1);
        assert.equal(r1.settled, recs.length, `round ${round}: ${JSON.stringify(r1)}`);
        rmSync(hold);
        // under the lock the second must find them among the commits after its lookup
        const r2 = await second;
        assert.equal(r2.duplicate_records, recs.length, `round ${round}: ${JSON.stringify(r2)}`);
        assert.equal(r2.settled, 0);
      } finally {
        rmSync(hold, { force: true });
        rmSync(held, { force: true });
      }
      assert.equal(await balance(cp, ctx.ids.account), before - want, `round ${round}`);
    }
    const m1 = await cp.metrics();
    // the lock-free lookup is what ran (each batch counted once)
    assert.equal(metric(m1, 'tollgate_cp_settle_early_checks_total') - early0, 2 * ROUNDS);
    // and the held batches' records were found among the kept commits
    assert.equal(metric(m1, 'tollgate_cp_settle_early_pending_duplicates_total') - pend0, 5 * ROUNDS);
    // each record once in the ledger
    const page = await cp.adminCall('QueryLedger', { account_id: ctx.ids.account, page_size: 1000 });
    const rows = page.entries.filter((e) => all.has(e.entry_id));
    assert.equal(rows.length, all.size);
    assert.equal(new Set(rows.map((e) => e.entry_id)).size, all.size);
    const charged = rows.reduce((s, e) => s - BigInt(e.amount_nano), 0n);
    assert.equal(charged, want);
  });

  // etcd can answer a commit with an error after applying it: its records
  // are then in the settled log but not among the commits kept for the
  // early checks. A batch with the same records, checked before that
  // commit and held until after it, must still find them (the control
  // plane reads the log's tail after the error and checks against the
  // ledger once it holds that commit).
  test(`${backend}: a commit applied but answered with an error: the same records in another batch charged once`, async () => {
    const cp = ctx.cp;
    const a = new FakeAgent(cp, 'edge-2');
    await a.enroll();
    const before = await balance(cp, ctx.ids.account);
    const recs = [];
    for (let i = 0; i < 5; i++) recs.push(a.record(ctx.ids, { tokens: { input_tokens: 2000 + i, output_tokens: 5 } }));
    const want = recs.reduce((s, r) => s + costOf(r.usage), 0n);
    const s1 = a.signed(recs);
    const s2 = a.signed(recs);
    const hold = path.join(dir, `${a.seq}.hold`), held = path.join(dir, `${a.seq}.held`);
    const fail = path.join(dir, 'commit-error');
    writeFileSync(hold, '');
    try {
      const second = a.report(s2);
      second.catch(() => {});
      await until(() => existsSync(held), { intervalMs: 10, what: `batch ${a.seq} held after its early check` });
      writeFileSync(fail, '');
      await assert.rejects(a.report(s1), (e) => e.code === 14 && /test hook/.test(e.details));
      assert.equal(existsSync(fail), false, 'the commit hook fired');
      rmSync(hold);
      const r2 = await second;
      assert.equal(r2.settled, 0, JSON.stringify(r2));
      assert.equal(r2.duplicate_records, recs.length);
    } finally {
      rmSync(hold, { force: true });
      rmSync(held, { force: true });
      rmSync(fail, { force: true });
    }
    // the agent resends the first: its marker answers what it settled
    const r1 = await a.report(s1);
    assert.equal(r1.duplicate_batch, true);
    assert.equal(r1.settled, recs.length);
    assert.equal(await balance(cp, ctx.ids.account), before - want);
    const page = await cp.adminCall('QueryLedger', { account_id: ctx.ids.account, page_size: 1000 });
    const ids = new Set(recs.map((r) => r.record_id));
    const rows = page.entries.filter((e) => ids.has(e.entry_id));
    assert.equal(rows.length, recs.length);
    assert.equal(rows.reduce((s, e) => s - BigInt(e.amount_nano), 0n), want);
  });
});
