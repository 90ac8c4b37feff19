// ledger_read_bench.mjs: what reading money back costs once the ledger holds
// real rows. Settles --batches x 1000 usage records (signed batches from the
// fake agent of tests/e2e/cp_agent_lib.mjs; every 1000th record belongs to
// run "bench-run", 1000 records of run "big-run") into a real tollgate-cp on
// LMDB, then times QueryLedger (a 100-row page plus totals over every
// matching row), a filtered query, GetRunReceipt of a 1000-request run, and
// ExportLedger through @grpc/grpc-js and through `tollctl ledger export`.
//
//   TG_BIN=$(bazel info bazel-bin) node controlplane/ledger_read_bench.mjs [--batches 50]
import { execFileSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { bin, until } from '../tests/e2e/lib/proc.mjs';
import { FakeAgent, seed } from '../tests/e2e/cp_agent_lib.mjs';
import { startCp, TOKENS } from '../tests/e2e/cp_admin_lib.mjs';

const nb = Number(process.argv[process.argv.indexOf('--batches') + 1]) || 50;
const cp = await startCp();
const out = [];
try {
  const reader = cp.as('reader');
  const agent = new FakeAgent(cp, 'bench-reader');
  await agent.enroll();
  await until(async () => {
    try { await agent.report(agent.signed([], 1)); return true; } catch (e) { if (/leader/.test(e.details)) return false; throw e; }
  }, { timeoutMs: 20000, what: 'leadership' });
  agent.seq = 1;
  const ids = await seed(cp, { topup: 10n ** 18n, name: 'bench' });
  for (let b = 0; b < nb; b++) {
    const recs = Array.from({ length: 1000 }, (_, i) => ({ ...agent.record(ids),
      run_id: b === 0 ? 'big-run' : (i === 0 ? 'bench-run' : '') }));
    await agent.report(agent.signed(recs));
  }
  const rows = nb * 1000 + 1;
  await until(async () => (await reader.call('QueryLedger', { page_size: 1 })).totals[0]?.count === String(rows),
    { timeoutMs: 120000, intervalMs: 500, what: `${rows} ledger rows` });

  const time = async (what, n, fn) => {
    const t = [];
    let r;
    for (let i = 0; i < n; i++) { const s = performance.now(); r = await fn(); t.push(performance.now() - s); }
    t.sort((a, b) => a - b);
    out.push({ what, ms: t[Math.floor(t.length / 2)].toFixed(1) });
    return r;
  };
  await time(`QueryLedger: 100-row page + totals over all ${rows} rows`, 5,
    () => reader.call('QueryLedger', { page_size: 100 }));
  await time(`QueryLedger run filter (${nb} rows) + totals`, 5, () => reader.call('QueryLedger', { run_id: 'bench-run' }));
  const rc = await time('GetRunReceipt of a 1000-request run', 5, () => reader.call('GetRunReceipt', { run_id: 'big-run' }, 60000));
  if (rc.records.length !== 1000) throw new Error(`receipt has ${rc.records.length} records`);
  const chunks = await time(`ExportLedger, all ${rows} rows (grpc-js)`, 3, () => reader.stream('ExportLedger', {}, 120000));
  const bytes = chunks.reduce((s, c) => s + c.lines.length, 0);
  const lines = chunks.reduce((s, c) => s + (c.lines.match(/\n/g) || []).length, 0);
  if (lines !== rows + 1) throw new Error(`export has ${lines} lines`);
  out.push({ what: `  = ${(rows / (Number(out.at(-1).ms) / 1000)).toFixed(0)} rows/s, ${(bytes / 1048576).toFixed(1)} MiB of CSV` });
  await time(`tollctl ledger export > file, all ${rows} rows`, 3, () => execFileSync(bin('cli/tollctl'), ['ledger', 'export'], {
    env: { PATH: process.env.PATH, TOLLGATE_SERVER: cp.grpcAddr, TOLLGATE_TOKEN: TOKENS.reader }, maxBuffer: 1 << 30 }));
} finally {
  await cp.stop('SIGTERM');
}
for (const r of out) console.log(r.ms ? `${r.what}: ${r.ms} ms (median)` : r.what);
process.exit(0);
