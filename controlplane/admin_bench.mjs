// admin_bench.mjs: what the admin API costs, on both store backends. Starts
// a real tollgate-cp (LMDB with fsync, and a real single-node etcd) and
// measures through @grpc/grpc-js: audited writes (CreateAccount: account +
// name index + 2 balances + audit event + audit counter in one transaction)
// with 1 and 8 concurrent callers, reads (GetAccount) with 8 callers, a
// 100-object ListAccounts page over 1,000 accounts, and one `tollctl whoami`
// process end to end. Results go to docs/PERFORMANCE.md ("Control plane").
//
//   TG_BIN=$(bazel info bazel-bin) node controlplane/admin_bench.mjs [--writes N]
import { execFileSync } from 'node:child_process';
import { bin } from '../tests/e2e/lib/proc.mjs';
import { startCp, startEtcd, ACCOUNT, TOKENS } from '../tests/e2e/cp_admin_lib.mjs';

const N = Number(process.argv[process.argv.indexOf('--writes') + 1]) || 400;

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

// Runs n calls of fn over `conc` concurrent workers; returns per-call ms and
// the wall time.
async function run(n, conc, fn) {
  const lat = [];
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: conc }, async () => {
    for (let i = next++; i < n; i = next++) {
      const s = process.hrtime.bigint();
      await fn(i);
      lat.push(Number(process.hrtime.bigint() - s) / 1e6);
    }
  }));
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  return { ops: Math.round(n / wall), p50: pct(lat, 50).toFixed(2), p99: pct(lat, 99).toFixed(2) };
}

async function bench(backend) {
  const etcd = backend === 'etcd' ? await startEtcd() : null;
  const cp = await startCp({ store: etcd ? `etcd:${etcd.url}` : undefined });
  const admins = Array.from({ length: 8 }, () => cp.as('admin'));
  const rows = [];
  try {
    const w1 = await run(N, 1, (i) => admins[0].call('CreateAccount', { account: ACCOUNT(`b1-${i}`) }));
    rows.push(['CreateAccount (audited write), 1 caller', w1]);
    const w8 = await run(N, 8, (i) => admins[i % 8].call('CreateAccount', { account: ACCOUNT(`b8-${i}`) }));
    rows.push(['CreateAccount, 8 callers', w8]);
    const ids = (await admins[0].call('ListAccounts', { page_size: 1000 })).accounts.map((a) => a.id);
    const r8 = await run(N * 4, 8, (i) => admins[i % 8].call('GetAccount', { id: ids[i % ids.length] }));
    rows.push(['GetAccount, 8 callers', r8]);
    for (let i = ids.length; i < 1000; i++) await admins[0].call('CreateAccount', { account: ACCOUNT(`fill-${i}`) });
    const l = await run(50, 1, () => admins[0].call('ListAccounts', { page_size: 100, page_token: '' }));
    rows.push(['ListAccounts page of 100 (1,000 accounts)', l]);
    const t = await run(20, 1, () => execFileSync(bin('cli/tollctl'), ['whoami'], {
      env: { PATH: process.env.PATH, TOLLGATE_SERVER: cp.grpcAddr, TOLLGATE_TOKEN: TOKENS.reader } }));
    rows.push(['tollctl whoami (process start to exit)', t]);
  } finally {
    await cp.stop('SIGTERM');
    await etcd?.proc.stop('SIGKILL');
  }
  return rows;
}

const out = [];
for (const backend of ['lmdb', 'etcd']) for (const [what, r] of await bench(backend)) out.push({ backend, what, ...r });
console.log('| backend | operation | ops/s | p50 ms | p99 ms |');
console.log('|---|---|---:|---:|---:|');
for (const r of out) console.log(`| ${r.backend} | ${r.what} | ${r.ops} | ${r.p50} | ${r.p99} |`);
process.exit(0);
