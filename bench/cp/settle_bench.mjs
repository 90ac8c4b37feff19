// Settlement throughput of tollgate-cp: records/s settled end to end, i.e.
// signed UsageBatches of --batch records reported over gRPC by --agents
// concurrent fake agents (each sends its batches in sequence order, like a
// real agent draining its outbox), each batch verified, deduplicated,
// repriced, committed in one store transaction, appended to the LMDB ledger
// (fsync) and acknowledged. Batches are built and signed before the clock
// starts. At the end the balance must have moved by exactly the sum of the
// recomputed costs, or the run fails.
//
// --driver node (default) sends with grpc-js from this process; --driver c
// hands the signed batches to bench/cp/settle_drive (gRPC C core, a thread
// per agent), whose sending costs the shared 2 cores far less. The load
// generator's own CPU in the timed phase is printed either way.
//
// --compression zstd|none is the control plane's --settled-compression
// (default here zstd on both stores; tollgate-cp's own default is none on
// etcd while older replicas may tail the log: docs/OPERATIONS.md).
//
// --warmup W first settles W more batches per agent, untimed (the same
// agents, sequences continuing): a fresh control plane spends its first
// second faulting in the heap its batches need (docs/PERFORMANCE.md, issue
// 18 session 6), which a control plane that has been up for a while does
// not. The default, 0, times a fresh control plane as the earlier tables do.
//
//   TG_BIN=$(bazel info bazel-bin) node bench/cp/settle_bench.mjs [--store lmdb|etcd]
//       [--agents 4] [--batches 25] [--batch 1000] [--driver node|c] [--warmup 0] [--compression zstd|none]
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import protobuf from 'protobufjs';
import { performance } from 'node:perf_hooks';
import { FakeAgent, balance, costOf, seed, startCp, startEtcd } from '../../tests/e2e/cp_agent_lib.mjs';
import { bin, tmpdir, until } from '../../tests/e2e/lib/proc.mjs';

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const storeKind = arg('store', 'lmdb');
const nAgents = Number(arg('agents', 4));
const nBatches = Number(arg('batches', 25));
const batchSize = Number(arg('batch', 1000));
const driver = arg('driver', 'node');
const nWarm = Number(arg('warmup', 0));
const compression = arg('compression', 'zstd');
if (driver !== 'node' && driver !== 'c') throw new Error('--driver node|c');

let etcd;
let cp;
try {
  if (storeKind === 'etcd') etcd = await startEtcd();
  cp = await startCp({ store: etcd ? `etcd:${etcd.url}` : undefined, nodeId: 'bench', heartbeatMs: 5000,
    extraArgs: ['--settled-compression', compression] });
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
    for (let b = 0; b < nWarm + nBatches; b++) {
      const recs = [];
      for (let i = 0; i < batchSize; i++) {
        const r = ag.record(ids, { tokens: { input_tokens: 200 + (i % 1000), output_tokens: 50 + (b % 100) } });
        want += costOf(r.usage);
        recs.push(r);
      }
      ag.reqs.push(ag.signed(recs));
    }
    ag.warm = ag.reqs.splice(0, nWarm);
    agents.push(ag);
  }
  const bytes = agents.reduce((s, ag) => s + ag.reqs.reduce((t, r) => t + r.batch.length, 0), 0);
  console.log(`prepared ${nAgents * nBatches} batches of ${batchSize} records (${(bytes / 1e6).toFixed(1)} MB signed) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  // the control plane's CPU time (user + system), from /proc
  const cpuSecs = (pid = cp.proc.child.pid) => {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
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
  let files = [];
  let warmFiles = [];
  let dir;
  if (driver === 'c') {
    // each agent's SignedUsageBatch messages, length-prefixed, for settle_drive
    const root = new protobuf.Root();
    root.resolvePath = (_o, t) => path.join(path.dirname(new URL(import.meta.url).pathname), '../../api', t);
    root.loadSync('tollgate/v1/usage.proto', { keepCase: true });
    const Signed = root.lookupType('tollgate.v1.SignedUsageBatch');
    dir = tmpdir('tg-settle-drive-');
    const write = (reqs, name) => {
      const parts = [];
      for (const req of reqs) {
        const m = Buffer.from(Signed.encode(Signed.fromObject(req)).finish());
        const len = Buffer.alloc(4);
        len.writeUInt32LE(m.length);
        parts.push(len, m);
      }
      const f = path.join(dir, name);
      writeFileSync(f, Buffer.concat(parts));
      return f;
    };
    files = agents.map((ag, i) => write(ag.reqs, `agent-${i}.bin`));
    if (nWarm > 0) warmFiles = agents.map((ag, i) => write(ag.warm, `warm-${i}.bin`));
  }
  if (nWarm > 0) {
    // untimed: the same agents, their first batches
    if (driver === 'c') {
      await new Promise((resolve, reject) => execFile(bin('bench/cp/settle_drive'), [`127.0.0.1:${cp.port}`, ...warmFiles],
        { timeout: 600000 }, (e, _o, stderr) => (e ? reject(new Error(`settle_drive (warm-up): ${stderr || e.message}`)) : resolve())));
    } else {
      await Promise.all(agents.map(async (ag) => { for (const req of ag.warm) await ag.report(req); }));
    }
    console.log(`warm-up: ${nAgents * nWarm} batches settled before the clock started`);
  }
  // tollgate_cp_settle_groups_total and _conflicts_total from /metrics
  const settleCounts = async () => {
    const hm = /tollgate-cp grpc=\S+ http=[\d.]+:(\d+)/.exec(cp.proc.output());
    if (!hm) return [];
    const text = await (await fetch(`http://127.0.0.1:${hm[1]}/metrics`)).text();
    const g = /^tollgate_cp_settle_groups_total (\d+)/m.exec(text);
    const c = /^tollgate_cp_settle_conflicts_total (\d+)/m.exec(text);
    return [g ? Number(g[1]) : undefined, c ? Number(c[1]) : undefined];
  };
  const [groups0 = 0] = nWarm > 0 ? await settleCounts() : [0];
  const tail0 = threadCpu('cp-tail');
  const cpu0 = cpuSecs();
  const etcdCpu0 = etcd ? cpuSecs(etcd.proc.child.pid) : 0;
  const gen0 = process.cpuUsage();
  let warmChild = 0; // the warm-up driver's CPU, already in cutime
  try {
    const f = readFileSync(`/proc/${process.pid}/stat`, 'utf8').split(') ')[1].split(' ');
    warmChild = (Number(f[13]) + Number(f[14])) / 100;
  } catch { /* not Linux */ }
  let genChild = 0;
  const start = performance.now();
  let secs;
  if (driver === 'c') {
    const out = await new Promise((resolve, reject) => {
      const child = execFile(bin('bench/cp/settle_drive'), [`127.0.0.1:${cp.port}`, ...files],
        { timeout: 600000 }, (e, stdout, stderr) => (e ? reject(new Error(`settle_drive: ${stderr || e.message}`)) : resolve(stdout)));
      child.on('exit', () => {
        try {
          const f = readFileSync(`/proc/${process.pid}/stat`, 'utf8').split(') ')[1].split(' ');
          genChild = (Number(f[13]) + Number(f[14])) / 100 - warmChild; // cutime + cstime: the reaped driver
        } catch { /* not Linux */ }
      });
    });
    const m = /DRIVE batches=(\d+) settled=(\d+) secs=([\d.]+) p50_ms=([\d.]+) p99_ms=([\d.]+)/.exec(out);
    if (!m || Number(m[2]) !== nAgents * nBatches * batchSize) throw new Error(`settle_drive: ${out}`);
    secs = Number(m[3]);
    lat.p50 = Number(m[4]); // as the driver measured them
    lat.p99 = Number(m[5]);
    rmSync(dir, { recursive: true, force: true });
  } else {
    await Promise.all(agents.map(async (ag) => {
      for (const req of ag.reqs) {
        const s = performance.now();
        const r = await ag.report(req);
        lat.push(performance.now() - s);
        if (r.settled !== batchSize) throw new Error(`settled ${r.settled} of ${batchSize}`);
      }
    }));
    secs = (performance.now() - start) / 1000;
  }
  const gen = process.cpuUsage(gen0);
  const genCpu = (gen.user + gen.system) / 1e6 + genChild;
  const cpu = cpuSecs() - cpu0;
  const etcdCpu = etcd ? cpuSecs(etcd.proc.child.pid) - etcdCpu0 : 0;
  const tail = threadCpu('cp-tail') - tail0;
  const total = nAgents * nBatches * batchSize;
  lat.sort((x, y) => x - y);
  console.log(`load generator (${driver}) CPU ${genCpu.toFixed(2)} s during the ${secs.toFixed(2)} s run`);
  if (etcd) console.log(`etcd CPU ${etcdCpu.toFixed(2)} s (${(etcdCpu * 1e6 / (nAgents * nBatches * batchSize)).toFixed(1)} us/record)`);
  const after = await balance(cp, ids.account);
  if (before - after !== want) throw new Error(`balance moved ${before - after}, want ${want}`);
  console.log(`store=${storeKind} compression=${compression} agents=${nAgents} batches=${nAgents * nBatches} batch=${batchSize}: ` +
    `${total} records in ${secs.toFixed(2)} s = ${Math.round(total / secs)} records/s; ` +
    `control plane CPU ${(cpu * 1e6 / total).toFixed(1)} us/record (${Math.round(total / cpu)} records per CPU-second; ledger tailer ${(tail * 1e6 / total).toFixed(1)} us of it); batch latency p50 ${(lat.p50 ?? lat[Math.floor(lat.length / 2)]).toFixed(1)} ms p99 ${(lat.p99 ?? lat[Math.floor(lat.length * 0.99)]).toFixed(1)} ms; balance exact`);
  // how many settlement transactions carried the timed batches (group commit)
  const [groups, conflicts] = await settleCounts();
  if (groups !== undefined) console.log(`settlement transactions: ${groups - groups0} (${(nAgents * nBatches / (groups - groups0)).toFixed(2)} batches each, probe batches included), ${conflicts ?? '?'} retried after a conflict`);
  if (process.env.TG_CP_LOG_LEVEL === 'debug') {
    // per-phase timings of the last batches (controlplane/settle.c debug log)
    const lines = cp.proc.output().split('\n').filter((l) => l.includes('records; verify'));
    for (const l of lines.slice(-6)) console.log(l);
    // the settlement transactions' phases (controlplane/settle.c run_group)
    for (const l of cp.proc.output().split('\n').filter((x) => x.includes('group of'))) console.log(l);
  }
} finally {
  await cp?.stop();
  await etcd?.proc.stop('SIGKILL');
}
process.exit(0);
