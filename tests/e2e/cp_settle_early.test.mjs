// Settlement's early duplicate check (controlplane/settle.c early_check):
// a batch's record ids are looked up in the ledger before it queues for the
// commit lock, and under the lock only the commits since that lookup are
// checked. The window that could let a record settle twice is a batch
// carrying the same records that commits, and reaches the ledger, while
// the first batch waits between its lookup and the lock. The test hook
// TG_CP_TEST_EARLY_DELAY_MS holds every batch in that window, so the second
// batch commits inside the first one's: each record is charged once, to the
// nano-unit, on both stores.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { FakeAgent, balance, costOf, startSettling } from './cp_agent_lib.mjs';

const DELAY_MS = 400;

for (const backend of ['lmdb', 'etcd']) describe(backend, () => {
  const ctx = {};
  before(() => startSettling(ctx, backend, 'cp-early', { TG_CP_TEST_EARLY_DELAY_MS: String(DELAY_MS) }));
  after(async () => {
    await ctx.cp?.stop();
    await ctx.etcd?.proc.stop('SIGKILL');
  });

  test(`${backend}: the same records in two batches, the second committed inside the first's wait: charged once`, async () => {
    const cp = ctx.cp;
    const a = new FakeAgent(cp);
    await a.enroll();
    const before = await balance(cp, ctx.ids.account);
    let want = 0n;
    const all = new Set();
    for (let round = 0; round < 3; round++) {
      const recs = [];
      for (let i = 0; i < 5; i++) recs.push(a.record(ctx.ids, { tokens: { input_tokens: 1000 + round * 7 + i, output_tokens: 3 } }));
      want += recs.reduce((s, r) => s + costOf(r.usage), 0n);
      for (const r of recs) all.add(r.record_id);
      // first: looks its ids up, then waits DELAY_MS. second (the same
      // records, the next sequence) looks them up while the first waits (not
      // settled yet), then waits itself while the first commits and reaches
      // the ledger: under the lock it must find them among the commits
      // after its lookup
      const first = a.report(a.signed(recs));
      await new Promise((r) => setTimeout(r, DELAY_MS / 4));
      const second = a.report(a.signed(recs));
      const [r1, r2] = await Promise.all([first, second]);
      assert.equal(r1.settled + r2.settled, recs.length, `round ${round}: ${JSON.stringify([r1, r2])}`);
      assert.equal(r1.duplicate_records + r2.duplicate_records, recs.length);
      assert.equal(await balance(cp, ctx.ids.account), before - want, `round ${round}`);
    }
    // the lock-free lookup is what ran
    const m = /^tollgate_cp_settle_early_checks_total (\d+)/m.exec(await cp.metrics());
    assert.ok(m && Number(m[1]) >= 6, `early checks: ${m && m[1]}`);
    // each record once in the ledger
    const page = await cp.adminCall('QueryLedger', { account_id: ctx.ids.account, page_size: 1000 });
    const rows = page.entries.filter((e) => all.has(e.entry_id));
    assert.equal(rows.length, all.size);
    assert.equal(new Set(rows.map((e) => e.entry_id)).size, all.size);
    const charged = rows.reduce((s, e) => s - BigInt(e.amount_nano), 0n);
    assert.equal(charged, want);
  });
});
