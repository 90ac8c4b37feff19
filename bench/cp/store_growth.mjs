// Store growth under steady settlement load: does the control plane's
// embedded LMDB store level off? Starts tollgate-cp on LMDB with its
// defaults (settled-log retention and batch markers 60 s, revision history
// 120 s; override with --retention / --history), then settles --rate
// records/s in batches of --batch from --agents fake agents for --minutes,
// and every --every seconds samples the store file with mdb_stat -ef:
// pages used (the high-water mark: LMDB files never shrink), free pages
// (reusable), live pages = used - free, plus the ledger's size for scale.
// Levelling off = pages used stops growing once retention and compaction
// free as much per second as settlement writes.
//
//   TG_BIN=$(bazel info bazel-bin) node bench/cp/store_growth.mjs [--minutes 3]
//       [--rate 700] [--batch 100] [--agents 2] [--every 10] [--retention S] [--history S]
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { FakeAgent, seed, startCp, waitLeader } from '../../tests/e2e/cp_agent_lib.mjs';

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const minutes = Number(arg('minutes', 3));
const rate = Number(arg('rate', 700));
const batch = Number(arg('batch', 100));
const nAgents = Number(arg('agents', 2));
const every = Number(arg('every', 10));
const extraArgs = [];
if (arg('retention')) extraArgs.push('--settled-retention-s', arg('retention'));
if (arg('history')) extraArgs.push('--store-history-s', arg('history'));

function stat(dir) {
  const out = execFileSync('mdb_stat', ['-ef', dir], { encoding: 'utf8' });
  const num = (re) => Number((out.match(re) || [])[1] || 0);
  return { used: num(/Number of pages used: (\d+)/), free: num(/Free pages: (\d+)/), psize: num(/Page size: (\d+)/) || 4096 };
}
const mb = (n) => (n / 1048576).toFixed(1);

const cp = await startCp({ nodeId: 'growth', heartbeatMs: 5000, extraArgs });
try {
  await waitLeader(cp);
  const ids = await seed(cp, { topup: 1000000n * 1000000000n });
  const agents = [];
  for (let a = 0; a < nAgents; a++) {
    const ag = new FakeAgent(cp, `growth-${a}`);
    await ag.enroll();
    agents.push(ag);
  }
  const storeDir = path.join(cp.dataDir, 'store');
  const ledgerFile = path.join(cp.dataDir, 'ledger', 'data.mdb');
  const t0 = Date.now();
  const end = t0 + minutes * 60e3;
  let settled = 0;
  let rowBytes = 0;
  const perBatchMs = (batch * nAgents * 1000) / rate; // each agent sends one batch per interval
  console.log(`# store growth: ${rate} records/s, batches of ${batch}, ${nAgents} agents, ${minutes} min, ` +
    `cp args ${extraArgs.join(' ') || '(defaults)'}, ${os.cpus().length} cores`);
  console.log('t_s\trecords\tpages_used\tfree_pages\tlive_MB\tfile_hw_MB\tledger_MB\tload1');
  const sample = () => {
    const s = stat(storeDir);
    let ledger = 0;
    for (const f of [ledgerFile, path.dirname(ledgerFile)]) {
      try { const st = statSync(f); if (st.isFile()) { ledger = st.size; break; } } catch { /* not yet */ }
    }
    console.log([Math.round((Date.now() - t0) / 1000), settled, s.used, s.free, mb((s.used - s.free) * s.psize),
      mb(s.used * s.psize), mb(ledger), os.loadavg()[0].toFixed(2)].join('\t'));
    return s;
  };
  sample();
  const timer = setInterval(sample, every * 1000);
  await Promise.all(agents.map(async (ag) => {
    let next = Date.now();
    while (Date.now() < end) {
      const recs = [];
      for (let i = 0; i < batch; i++) {
        const r = ag.record(ids, { tokens: { input_tokens: 200 + i, output_tokens: 50 } });
        r.attempts = [{ index: 0, channel_id: ids.channel, upstream_model: 'gpt-4o', http_status: 200,
          decision: 'ATTEMPT_DECISION_FINAL', latency_us: 812000, ttft_us: 240000 }];
        r.user_agent = 'OpenAI/Python 1.54.0';
        r.client_ip = '203.0.113.7';
        r.usage.raw_provider_usage = '{"prompt_tokens":230,"completion_tokens":50,"total_tokens":280,' +
          '"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}';
        recs.push(r);
      }
      const req = ag.signed(recs);
      if (!rowBytes) rowBytes = req.batch.length / batch;
      const res = await ag.report(req);
      settled += res.settled;
      next += perBatchMs;
      const wait = next - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  }));
  clearInterval(timer);
  const last = sample();
  console.log(`# settled ${settled} records (${Math.round(settled / ((Date.now() - t0) / 1000))}/s), ` +
    `~${Math.round(rowBytes)} bytes per record on the wire; store high-water ${mb(last.used * last.psize)} MB`);
} finally {
  const exit = await cp.stop('SIGTERM');
  if (exit.code !== 0) console.error('tollgate-cp exit', exit);
}
