// Settlement rules an operator relies on, on both store backends: a batch is
// never wedged by a configuration problem and no charge is ever dropped
// (records whose account is missing or has no bucket for the route type
// settle as flagged "unbilled" rows with their cost kept; records of
// requests that failed upstream settle as zero-cost receipt rows), every
// agent's last settled batch sequence shows in ListAgents and
// `tollctl agents list`, and concurrent batches that share record ids
// (grouped into one store transaction) charge each record once.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { bin } from './lib/proc.mjs';
import { ADMIN_TOKEN, FakeAgent, balance, costOf, startSettling } from './cp_agent_lib.mjs';

const run = promisify(execFile);

async function metric(cp, name) {
  const m = /tollgate-cp grpc=\S+ http=[\d.]+:(\d+)/.exec(cp.proc.output());
  const text = await (await fetch(`http://127.0.0.1:${m[1]}/metrics`)).text();
  const v = new RegExp(`^${name} (\\d+)`, 'm').exec(text);
  return v ? Number(v[1]) : NaN;
}

for (const backend of ['lmdb', 'etcd']) describe(backend, () => {
  const ctx = {};

  before(() => startSettling(ctx, backend, 'cp-rules'));

  after(async () => {
    const exit = await ctx.cp?.stop();
    await ctx.etcd?.proc.stop('SIGKILL');
    assert.equal(exit?.code, 0, 'tollgate-cp exits 0 on SIGTERM');
  });

  test(`${backend}: a record with no account or no bucket settles unbilled, failed requests as zero-cost receipts; the agent is never wedged`, async () => {
    const cp = ctx.cp;
    const ids = ctx.ids;
    // an account with only a credit bucket: pooled usage has nowhere to go
    const lean = await cp.adminCall('CreateAccount', { account: { name: `lean-${backend}`,
      billing_mode: 'BILLING_MODE_PREPAID', buckets: [{ name: 'credit', currency: 'USD' }] } });
    const a = new FakeAgent(cp, 'rules-1');
    await a.enroll();
    const before = await balance(cp, ids.account);
    const unbilled0 = await metric(cp, 'tollgate_cp_unbilled_records_total');

    const ok = a.record(ids, { tokens: { input_tokens: 1000, output_tokens: 10 } });
    const noAccount = { ...a.record(ids, { tokens: { input_tokens: 2000, output_tokens: 20 } }), account_id: 'acc_GONE' };
    const noBucket = { ...a.record(ids, { tokens: { input_tokens: 3000, output_tokens: 30 } }), account_id: lean.id };
    // every attempt failed upstream: no serving channel, no route type, no tokens, cost 0
    const failed = { ...a.record(ids, { tokens: {}, costNano: 0n }), channel_id: '', upstream_model: '',
      route_type: 0, bucket: '', client_status: 502, error_class: 0,
      attempts: [
        { index: 0, channel_id: ids.channel, upstream_model: 'gpt-4o', http_status: 500, error_message: 'upstream 500', latency_us: 1200 },
        { index: 1, channel_id: ids.channel, upstream_model: 'gpt-4o', http_status: 0, error_message: 'connect refused', latency_us: 300 },
      ] };
    const req = a.signed([ok, noAccount, noBucket, failed]);
    const r = await a.report(req);
    assert.equal(r.duplicate_batch, false);
    assert.equal(r.settled, 4, 'every record settles: nothing wedges the batch');
    assert.equal(r.unbilled, 2);
    assert.equal(r.cost_mismatches, 0);
    assert.equal(await balance(cp, ids.account), before - costOf(ok.usage), 'only the billable record is debited');
    assert.equal(await balance(cp, lean.id, 'credit'), 0n, 'the lean account is untouched');
    assert.equal(await metric(cp, 'tollgate_cp_unbilled_records_total'), unbilled0 + 2);

    // the rows: the cost is kept and flagged, never dropped
    const page = await cp.adminCall('QueryLedger', { page_size: 1000 });
    const rows = Object.fromEntries(page.entries.map((e) => [e.entry_id, e]));
    const ua = rows[noAccount.record_id];
    assert.ok(ua, 'the no-account record has a row');
    assert.equal(ua.unbilled, true);
    assert.equal(ua.unbilled_reason, "account 'acc_GONE' not found");
    assert.equal(BigInt(ua.amount_nano), 0n);
    assert.equal(BigInt(ua.recomputed_cost_nano), costOf(noAccount.usage));
    assert.equal(BigInt(ua.record.cost_nano), costOf(noAccount.usage));
    assert.equal(ua.bucket, '');
    const ub = rows[noBucket.record_id];
    assert.equal(ub.unbilled, true);
    assert.match(ub.unbilled_reason, /no bucket for route type pooled/);
    assert.equal(BigInt(ub.recomputed_cost_nano), costOf(noBucket.usage));
    const rf = rows[failed.record_id];
    assert.ok(rf, 'the failed request has a receipt row');
    assert.equal(rf.unbilled, false);
    assert.equal(rf.cost_mismatch, false);
    assert.equal(BigInt(rf.amount_nano), 0n);
    assert.equal(rf.bucket, '');
    assert.equal(rf.record.attempts.length, 2, 'each failed attempt is on the receipt');
    assert.equal(rf.record.attempts[1].error_message, 'connect refused');
    assert.equal(rows[ok.record_id].unbilled, false);
    assert.equal(rows[ok.record_id].bucket, 'wallet');
    // totals tell priced from charged: the unbilled rows are counted apart,
    // and every total agrees with the rows it sums
    assert.ok(!page.next_page_token, 'one page holds every row here');
    const usd = page.totals.find((t) => t.currency === 'USD');
    assert.ok(usd, 'USD totals');
    const usage = page.entries.filter((e) => e.kind === 'LEDGER_KIND_USAGE' && e.record);
    const sum = (f) => usage.reduce((s, e) => s + f(e), 0n);
    assert.equal(BigInt(usd.charged_nano), sum((e) => -BigInt(e.amount_nano ?? 0)));
    assert.equal(BigInt(usd.unbilled_count), sum((e) => (e.unbilled ? 1n : 0n)));
    assert.equal(BigInt(usd.unbilled_cost_nano), sum((e) => (e.unbilled ? BigInt(e.record.cost_nano ?? 0) : 0n)));
    assert.ok(BigInt(usd.unbilled_count) >= 2n);
    assert.ok(BigInt(usd.unbilled_cost_nano) >= costOf(noAccount.usage) + costOf(noBucket.usage));

    // a resend is answered from the marker; the next batch settles normally
    const again = await a.report(req);
    assert.equal(again.duplicate_batch, true);
    assert.equal(again.unbilled, 2);
    const next = a.record(ids, { tokens: { input_tokens: 5, output_tokens: 5 } });
    const r2 = await a.report(a.signed([next]));
    assert.equal(r2.settled, 1);
    assert.equal(await balance(cp, ids.account), before - costOf(ok.usage) - costOf(next.usage));
  });

  test(`${backend}: concurrent batches sharing record ids charge each record once; last_batch_sequence shows the highest settled batch`, async () => {
    const cp = ctx.cp;
    const ids = ctx.ids;
    const agents = [];
    for (let i = 0; i < 6; i++) {
      const ag = new FakeAgent(cp, `grp-${i}`);
      await ag.enroll();
      agents.push(ag);
    }
    const before = await balance(cp, ids.account);
    const groups0 = await metric(cp, 'tollgate_cp_settle_groups_total');
    // each agent: 4 batches of 30 records; every batch also repeats 5 records
    // of its predecessor (an agent resending under a new sequence), and all
    // batches of all agents are in flight at once
    let want = 0n;
    const jobs = [];
    for (const ag of agents) {
      let prev = [];
      for (let b = 0; b < 4; b++) {
        const recs = [];
        for (let i = 0; i < 30; i++) {
          const r = ag.record(ids, { tokens: { input_tokens: 50 + b * 31 + i, output_tokens: 7 + i } });
          want += costOf(r.usage);
          recs.push(r);
        }
        const req = ag.signed([...prev.slice(0, 5), ...recs]);
        prev = recs;
        jobs.push(ag.report(req), ag.report(req)); // and each batch twice at once
      }
    }
    const res = await Promise.all(jobs);
    const settled = res.filter((r) => !r.duplicate_batch).reduce((s, r) => s + r.settled, 0);
    assert.equal(settled, 6 * 4 * 30, 'each record settled once');
    assert.equal(await balance(cp, ids.account), before - want, 'charged exactly once');
    const groups = await metric(cp, 'tollgate_cp_settle_groups_total');
    assert.ok(groups > groups0 && groups - groups0 <= 24, `${groups - groups0} settlement transactions for 24 batches`);

    // AgentInfo.last_batch_sequence: the admin API and tollctl
    const list = await cp.adminCall('ListAgents', { page_size: 1000 });
    for (const ag of agents) {
      const info = list.agents.find((x) => x.agent_id === ag.id);
      assert.equal(String(info.last_batch_sequence), '4', `agent ${ag.name}`);
    }
    const out = await run(bin('cli/tollctl'), ['agents', 'list', '--json', '--page-size', '1000'],
      { env: { ...process.env, TOLLGATE_SERVER: `127.0.0.1:${cp.port}`, TOLLGATE_TOKEN: ADMIN_TOKEN } });
    const j = JSON.parse(out.stdout);
    assert.equal(String(j.agents.find((x) => x.agent_id === agents[0].id).last_batch_sequence), '4');
    // an older batch settling late does not move it back
    const late = agents[0].record(ids, { tokens: { input_tokens: 1, output_tokens: 1 } });
    const rl = await agents[0].report(agents[0].signed([late], 99));
    assert.equal(rl.settled, 1);
    const l2 = await cp.adminCall('ListAgents', { page_size: 1000 });
    assert.equal(String(l2.agents.find((x) => x.agent_id === agents[0].id).last_batch_sequence), '99');
    const l3late = agents[0].record(ids, { tokens: { input_tokens: 1, output_tokens: 1 } });
    await agents[0].report(agents[0].signed([l3late], 50));
    const l3 = await cp.adminCall('ListAgents', { page_size: 1000 });
    assert.equal(String(l3.agents.find((x) => x.agent_id === agents[0].id).last_batch_sequence), '99',
      'a lower sequence settled later leaves the highest');
  });
});
