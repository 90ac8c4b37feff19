// Settlement throughput of tollgate-cp: records/s settled end to end, i.e.
// signed UsageBatches of --batch records reported over gRPC by --agents
// concurrent fake agents (each sends its batches in sequence order, like a
// real agent draining its outbox), each batch verified, deduplicated,
// repriced, committed in one store transaction, appended to the LMDB ledger
// (fsync) and acknowledged. Batches are built and signed before the clock
// starts. At the end the balance must have moved by exactly the sum of the
// recomputed costs, or the run fails.
//
//   TG_BIN=$(bazel info bazel-bin) node bench/cp/settle_bench.mjs [--store lmdb|etcd]
//       [--agents 4] [--batches 25] [--batch 1000]
import { readdirSync, readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { FakeAgent, balance, costOf, seed, startCp, startEtcd } from '../../tests/e2e/cp_agent_lib.mjs';
import { until } from '../../tests/e2e/lib/proc.mjs';

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const storeKind = arg('store', 'lmdb');
const nAgents = Number(arg('agents', 4));
const nBatches = Number(arg('batches', 25));
const batchSize = Number(arg('batch', 1000));

let etcd;
let cp;
try {
  if (storeKind === 'etcd') etcd = await startEtcd();
  cp = await startCp({ store: etcd ? `etcd:${etcd.url}` : undefined, nodeId: 'bench', heartbeatMs: 5000 });
  const probe = new FakeAgent(cp, 'probe');
  await probe.enroll();
  await until(async () => {
    try { await probe.report(probe.signed([])); return true; } catch (e) { if (/not the settling leader/.test(e.details)) return false; throw e; }
  }, { timeoutMs: 15000, what: 'leadership' });
  const ids = await seed(cp, { topup: 1000000n * 1000000000n });
  const before = await balance(cp, ids.account);

  const agents = [];
  let want = 0n;
  const t0 = performance.now();
  for (let a = 0; a < nAgents; a++) {
    const ag = new FakeAgent(cp, `bench-${a}`);
    await ag.enroll();
    ag.reqs = [];
    for (let b = 0; b < nBatches; b++) {
      const recs = [];
      for (let i = 0; i < batchSize; i++) {
        const r = ag.record(ids, { tokens: { input_tokens: 200 + (i % 1000), output_tokens: 50 + (b % 100) } });
        want += costOf(r.usage);
        recs.push(r);
      }
      ag.reqs.push(ag.signed(recs));
    }
    agents.push(ag);
  }
  const bytes = agents.reduce((s, ag) => s + ag.reqs.reduce((t, r) => t + r.batch.length, 0), 0);
  console.log(`prepared ${nAgents * nBatches} batches of ${batchSize} records (${(bytes / 1e6).toFixed(1)} MB signed) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  // the control plane's CPU time (user + system), from /proc
  const cpuSecs = () => {
    const f = readFileSync(`/proc/${cp.proc.child.pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  };
  // one thread's CPU by name (the tailer appends the ledger: cp-tail)
  const threadCpu = (name) => {
    let t = 0;
    for (const tid of readdirSync(`/proc/${cp.proc.child.pid}/task`)) {
      try {
        if (readFileSync(`/proc/${cp.proc.child.pid}/task/${tid}/comm`, 'utf8').trim() !== name) continue;
        const f = readFileSync(`/proc/${cp.proc.child.pid}/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
        t += (Number(f[11]) + Number(f[12])) / 100;
      } catch { /* thread gone */ }
    }
    return t;
  };
  const lat = [];
  const tail0 = threadCpu('cp-tail');
  const cpu0 = cpuSecs();
  const start = performance.now();
  await Promise.all(agents.map(async (ag) => {
    for (const req of ag.reqs) {
      const s = performance.now();
      const r = await ag.report(req);
      lat.push(performance.now() - s);
      if (r.settled !== batchSize) throw new Error(`settled ${r.settled} of ${batchSize}`);
    }
  }));
  const secs = (performance.now() - start) / 1000;
  const cpu = cpuSecs() - cpu0;
  const tail = threadCpu('cp-tail') - tail0;
  const total = nAgents * nBatches * batchSize;
  lat.sort((x, y) => x - y);
  const after = await balance(cp, ids.account);
  if (before - after !== want) throw new Error(`balance moved ${before - after}, want ${want}`);
  console.log(`store=${storeKind} agents=${nAgents} batches=${nAgents * nBatches} batch=${batchSize}: ` +
    `${total} records in ${secs.toFixed(2)} s = ${Math.round(total / secs)} records/s; ` +
    `control plane CPU ${(cpu * 1e6 / total).toFixed(1)} us/record (${Math.round(total / cpu)} records per CPU-second; ledger tailer ${(tail * 1e6 / total).toFixed(1)} us of it); batch latency p50 ${lat[Math.floor(lat.length / 2)].toFixed(1)} ms p99 ${lat[Math.floor(lat.length * 0.99)].toFixed(1)} ms; balance exact`);
  // how many settlement transactions carried the batches (group commit)
  const hm = /tollgate-cp grpc=\S+ http=[\d.]+:(\d+)/.exec(cp.proc.output());
  if (hm) {
    const text = await (await fetch(`http://127.0.0.1:${hm[1]}/metrics`)).text();
    const groups = /^tollgate_cp_settle_groups_total (\d+)/m.exec(text);
    const conflicts = /^tollgate_cp_settle_conflicts_total (\d+)/m.exec(text);
    if (groups) console.log(`settlement transactions: ${groups[1]} (${(nAgents * nBatches / Number(groups[1])).toFixed(2)} batches each, probe batches included), ${conflicts ? conflicts[1] : '?'} retried after a conflict`);
  }
  if (process.env.TG_CP_LOG_LEVEL === 'debug') {
    // per-phase timings of the last batches (controlplane/settle.c debug log)
    const lines = cp.proc.output().split('\n').filter((l) => l.includes('records; verify'));
    for (const l of lines.slice(-6)) console.log(l);
  }
} finally {
  await cp?.stop();
  await etcd?.proc.stop('SIGKILL');
}
process.exit(0);
