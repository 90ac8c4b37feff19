// What spend leases cost a real deployment: a tollgate-cp (LMDB), one
// tollgate-agent enrolled with it and mockllm, driven through the agent with
// plain HTTP requests (max_tokens set, so every request is pre-authorized).
// Prints:
//   - the cold bucket's first-request wait: for --keys fresh accounts, the
//     first request's latency (it waits for the first lease) beside the p50
//     of the next ones on the same account;
//   - steady state: --seconds of --conc concurrent requests on one account,
//     requests/s and the lease requests the control plane granted per 1,000
//     requests (from its debug log of each grant).
// (The overspend side is tested, not benchmarked: tests/e2e/spend_leases.)
//
//   TG_BIN=$(bazel info bazel-bin) node bench/cp/lease_bench.mjs [--keys 20] [--seconds 10] [--conc 16]
import { performance } from 'node:perf_hooks';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent } from '../../agent/testing/agent.mjs';
import { startCp, seed, ENROLL_TOKEN } from '../../tests/e2e/cp_agent_lib.mjs';
import { freePort, tmpdir, until } from '../../tests/e2e/lib/proc.mjs';

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const nKeys = Number(arg('keys', 20));
const seconds = Number(arg('seconds', 10));
const conc = Number(arg('conc', 16));
const body = JSON.stringify({ model: 'gpt-4o', max_tokens: 16, messages: [{ role: 'user', content: 'Lease bench, please.' }] });

const pct = (v, p) => v.slice().sort((a, b) => a - b)[Math.min(v.length - 1, Math.floor(p * v.length))];
let mock, cp, agent;
try {
  mock = await startMock();
  const cpPort = await freePort();
  cp = await startCp({ dataDir: tmpdir('tg-lease-bench-'), env: { TG_CP_LOG_LEVEL: 'debug' },
    extraArgs: ['--listen', `127.0.0.1:${cpPort}`, '--log-level', 'debug'] });
  await seed(cp, { topup: 0n });
  const ch = await cp.adminCall('CreateChannel', { channel: { name: 'mock', provider: 'PROVIDER_TYPE_OPENAI',
    base_url: `${mock.url}/v1`, route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-mock' } });
  await cp.adminCall('PutRoute', { route: { model: 'gpt-4o', tiers: [{ targets: [{ channel_id: ch.id }] }] } });
  agent = await startAgent(null, { noSnapshot: true, args: ['--cp', `127.0.0.1:${cpPort}`, '--enroll-token', ENROLL_TOKEN] });
  await until(async () => (await fetch(`${agent.url}/readyz`)).status === 200, { timeoutMs: 15000, what: 'agent ready' });
  // every grant is a debug line of the control plane's: counted as it comes
  let grantsSeen = 0;
  const countGrants = (d) => { grantsSeen += (d.toString().match(/"comp":"cp\.lease"/g) || []).length; };
  cp.proc.child.stdout.on('data', countGrants);
  cp.proc.child.stderr.on('data', countGrants);

  let n = 0;
  async function account(topup) {
    const name = `b${n++}`;
    const a = await cp.adminCall('CreateAccount', { account: { name, billing_mode: 'BILLING_MODE_PREPAID',
      buckets: [{ name: 'credit', currency: 'USD' }, { name: 'wallet', currency: 'USD' }] } });
    await cp.adminCall('TopUp', { account_id: a.id, bucket: 'wallet', amount_nano: String(topup), currency: 'USD',
      idempotency_key: `b-${name}`, reason: 'bench' });
    const k = await cp.adminCall('CreateKey', { key: { account_id: a.id, name } });
    await until(async () => (await fetch(`${agent.base}/models`, { headers: { authorization: `Bearer ${k.secret}` } })).status === 200,
      { timeoutMs: 10000, what: 'key at the agent' });
    return { id: a.id, secret: k.secret };
  }
  const post = async (secret) => {
    const t0 = performance.now();
    const r = await fetch(`${agent.base}/chat/completions`, { method: 'POST', body,
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' } });
    await r.arrayBuffer();
    return { status: r.status, ms: performance.now() - t0 };
  };

  // 1. cold bucket: the first request waits for the first lease
  const first = [];
  const warm = [];
  for (let i = 0; i < nKeys; i++) {
    const a = await account(100n * 1000000000n);
    first.push((await post(a.secret)).ms);
    for (let j = 0; j < 5; j++) warm.push((await post(a.secret)).ms);
  }
  console.log(`cold bucket, first request: p50 ${pct(first, 0.5).toFixed(2)} ms, p99 ${pct(first, 0.99).toFixed(2)} ms; ` +
    `the next ones on the same bucket: p50 ${pct(warm, 0.5).toFixed(2)} ms (${nKeys} buckets)`);

  // 2. steady state: lease requests per 1,000 requests
  const a = await account(1000n * 1000000000n);
  await post(a.secret);
  const grants0 = grantsSeen;
  let done = 0;
  let bad = 0;
  const until_ = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: conc }, async () => {
    while (performance.now() < until_) {
      const r = await post(a.secret);
      if (r.status === 200) done++; else bad++;
    }
  }));
  const grants = grantsSeen - grants0;
  console.log(`steady state: ${done} requests in ${seconds} s (${(done / seconds).toFixed(0)}/s, ${bad} not 200), ` +
    `${grants} lease requests granted: ${(grants * 1000 / Math.max(done, 1)).toFixed(2)} per 1,000 requests`);
} finally {
  await agent?.stop();
  await cp?.stop();
  await mock?.stop();
}
