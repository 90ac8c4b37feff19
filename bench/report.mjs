// Turns bench/run.sh's raw results (TSV: scenario, target, metric, value,
// run; one line per run) into the markdown table of medians and ratios that
// docs/PERFORMANCE.md quotes. Beside the ratio of the medians it gives the
// median of the runs' own ratios (each run measures the targets seconds
// apart, so a drift of the machine's speed between runs cancels out), and
// an added latency is the median of the runs' own differences.
import { readFileSync } from 'node:fs';

const [file, agentNote, runs, dur, streams, nstream, nofile] = process.argv.slice(2);
const vals = new Map(); // "scn|tgt|metric" -> [values]
const byRun = new Map(); // "scn|tgt|metric" -> Map(run -> value)
const errors = new Set(); // "scn|tgt"
for (const line of readFileSync(file, 'utf8').split('\n')) {
  if (!line) continue;
  const [scn, tgt, metric, v, run] = line.split('\t');
  if (metric === 'error') { errors.add(`${scn}|${tgt}`); continue; }
  const k = `${scn}|${tgt}|${metric}`;
  if (!vals.has(k)) { vals.set(k, []); byRun.set(k, new Map()); }
  vals.get(k).push(Number(v));
  if (run !== undefined) byRun.get(k).set(run, Number(v)); // results from before runs were recorded: unpaired
}

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const agentMissing = !agentNote.startsWith('started') && !agentNote.startsWith('external');
// Node gateways from npm (bench/peers), each a column and its ratio to the agent.
const peers = (process.env.BENCH_PEERS || '').split(' ').filter(Boolean);
const peerNotes = (process.env.BENCH_PEER_NOTES || '').split(';').filter(Boolean);

function get(scn, tgt, metric) {
  if (errors.has(`${scn}|${tgt}`)) return 'error';
  const a = vals.get(`${scn}|${tgt}|${metric}`);
  return a && a.length ? median(a) : null;
}

// The median over the runs that measured both a and b of op(a, b); null
// when no run did.
function paired(scn, ta, tb, metric, op) {
  if (errors.has(`${scn}|${ta}`) || errors.has(`${scn}|${tb}`)) return null;
  const a = byRun.get(`${scn}|${ta}|${metric}`), b = byRun.get(`${scn}|${tb}|${metric}`);
  if (!a || !b) return null;
  const r = [...a].filter(([run]) => b.has(run)).map(([run, v]) => op(v, b.get(run))).filter(Number.isFinite);
  return r.length ? median(r) : null;
}
// What target t adds to direct (its median v): the median of the runs' own
// differences, else the difference of the medians; null without direct.
function added(scn, t, metric, v) {
  const p = paired(scn, t, 'direct', metric, (x, y) => x - y);
  if (p !== null) return p;
  const d = get(scn, 'direct', metric);
  return typeof d === 'number' ? v - d : null;
}
const pairedRatio = (scn, ta, tb, metric) => {
  const v = paired(scn, ta, tb, metric, (a, b) => (b === 0 ? NaN : a / b));
  return v === null ? '' : `${v.toFixed(2)}x`;
};

function fmt(v, unit) {
  if (v === null) return 'n/a';
  if (typeof v === 'string') return v;
  if (unit === 'KB') return `${(v / 1024).toFixed(1)} KB`;
  if (unit === 'ms') return `${(v / 1000).toFixed(2)} ms`;
  if (Math.abs(v) >= 100) return v.toFixed(0);
  return v.toFixed(1);
}

function ratio(a, b) {
  if (typeof a !== 'number' || typeof b !== 'number' || b === 0) return '';
  return `${(a / b).toFixed(2)}x`;
}

const rows = [
  ['small (1 KB, 32 conns)', 'requests/s', 'small', 'rps'],
  ['small (1 KB, 32 conns)', 'CPU us/request of the process under test', 'small', 'cpu_us_per_req'],
  ['small (1 KB, 32 conns)', '... of which in user space', 'small', 'user_us_per_req'],
  ['small (1 KB, 1 conn)', 'p50 latency us', 'small_c1', 'p50_us'],
  ['small (1 KB, 1 conn)', 'p99 latency us', 'small_c1', 'p99_us'],
  ['small (1 KB, 1 conn)', 'added p50 latency us (vs direct)', 'small_c1', 'p50_us', 'added'],
  ['small (1 KB, 1 conn)', 'added p99 latency us (vs direct)', 'small_c1', 'p99_us', 'added'],
  ['big (100 KB body, 8 conns)', 'requests/s', 'big', 'rps'],
  ['big (100 KB body, 8 conns)', 'CPU us/request of the process under test', 'big', 'cpu_us_per_req'],
  ['stream (32 tokens, 1 ms apart)', 'TTFT p50', 'stream', 'ttft_p50_us', 'ms'],
  ['stream (32 tokens, 1 ms apart)', 'TTFT p99', 'stream', 'ttft_p99_us', 'ms'],
  ['stream (32 tokens, 1 ms apart)', 'added TTFT p50 (vs direct)', 'stream', 'ttft_p50_us', 'added-ms'],
  ['stream (32 tokens, 1 ms apart)', 'total p50', 'stream', 'total_p50_us', 'ms'],
  [`idle streams (${streams} open, first run)`, 'RSS growth per open stream', 'idle', 'bytes_per_stream', 'KB'],
];

const out = [];
out.push(`| Scenario | Metric | mockllm direct | nginx proxy_pass | tollgate agent | nginx / direct | agent / nginx | ` +
  `agent / nginx, paired |` + peers.map((p) => ` ${p} | ${p} / agent |`).join(''));
out.push(`|---|---|---|---|---|---|---|---|${peers.map(() => '---|---|').join('')}`);
for (const [label, metric, scn, key, mode] of rows) {
  const cell = (tgt) => {
    if (tgt === 'agent' && agentMissing) return 'not yet built';
    let v = get(scn, tgt, key);
    if (mode === 'added' || mode === 'added-ms') {
      if (tgt === 'direct') return '-';
      if (typeof v === 'number') v = added(scn, tgt, key, v);
      return fmt(v, mode === 'added-ms' ? 'ms' : undefined);
    }
    return fmt(v, mode);
  };
  const d = get(scn, 'direct', key);
  const n = get(scn, 'nginx', key);
  const a = agentMissing ? null : get(scn, 'agent', key);
  if (d === null && n === null && a === null) continue; // not measured (--idle-only)
  const isAdded = mode === 'added' || mode === 'added-ms';
  // CPU rows compare the proxies with each other (direct is the upstream's own cost).
  const nd = isAdded || key === 'cpu_us_per_req' || key === 'user_us_per_req' || key === 'bytes_per_stream' ? '' : ratio(n, d);
  const an = isAdded ? '' : ratio(a, n);
  const anp = isAdded || agentMissing ? '' : pairedRatio(scn, 'agent', 'nginx', key);
  const pc = peers.map((p) => {
    const v = get(scn, p, key);
    return ` ${cell(p)} | ${isAdded ? '' : ratio(v, a)} |`;
  }).join('');
  out.push(`| ${label} | ${metric} | ${cell('direct')} | ${cell('nginx')} | ${cell('agent')} | ${nd} | ${an} | ${anp} |${pc}`);
}
out.push('');
// The TLS rows: the same load, the upstream behind nginx's ssl listener.
const tlsRows = rows.filter(([, , scn, key, mode]) => ['small', 'small_c1', 'stream'].includes(scn) &&
  !key.includes('p99') && (mode !== 'ms' || key === 'ttft_p50_us'));
if (tlsRows.some(([, , scn, key]) => get(scn, 'nginx_tls', key) !== null)) {
  out.push('TLS upstream (mockllm behind an nginx ssl listener, test CA; connections reused; the ' +
    'terminator\'s CPU is not counted):');
  out.push('');
  out.push('| Scenario | Metric | nginx proxy_pass https | tollgate agent https | agent / nginx | agent / nginx, paired |');
  out.push('|---|---|---|---|---|---|');
  for (const [label, metric, scn, key, mode] of tlsRows) {
    const isAdded = mode === 'added' || mode === 'added-ms';
    const c = (t) => {
      let v = get(scn, t, key);
      if (isAdded) {
        if (typeof v === 'number') v = added(scn, t, key, v);
        return [v, fmt(v, mode === 'added-ms' ? 'ms' : undefined)];
      }
      return [v, fmt(v, mode)];
    };
    const [n, nf] = c('nginx_tls');
    const [a, af] = agentMissing ? [null, 'not yet built'] : c('agent_tls');
    const p = isAdded || agentMissing ? '' : pairedRatio(scn, 'agent_tls', 'nginx_tls', key);
    out.push(`| ${label} | ${metric} | ${nf} | ${af} | ${isAdded ? '' : ratio(a, n)} | ${p} |`);
  }
  out.push('');
}
const times = ['direct', 'nginx', 'agent', ...peers].map((t) => [t, get('idle', t, 'open_s'), get('idle', t, 'release_s')])
  .filter(([, o]) => typeof o === 'number');
if (times.length) {
  out.push(`Idle row, seconds to open all ${streams} streams / to let go of them after the client closed them: ` +
    times.map(([t, o, r]) => `${t} ${o} / ${typeof r === 'number' ? r : '?'}`).join(', ') + '.');
  out.push('');
}
const procs = ['nginx', 'agent'].map((t) => [t, get('idle', t, 'procs')]).filter(([, v]) => typeof v === 'number' && v > 1);
if (procs.length) {
  out.push(`Idle row: ${streams} streams do not fit in one proxy process (two open files a stream, ` +
    `open-files limit ${nofile}), so ${procs.map(([t, v]) => `${t} ran as ${v} processes`).join(', ')} ` +
    `behind one SO_REUSEPORT port, RSS summed; mockllm is one process.`);
  out.push('');
}
out.push(`Medians of ${runs} run(s) of ${dur} s each (wrk -t1; streams: ${nstream} requests, 4 at a time, ` +
  `measured by bench/stream_client.mjs); each run measures one scenario on every target back to back. ` +
  `"agent / nginx, paired" is the median of the runs' own ratios; an added latency is the median of the ` +
  `runs' own differences from direct. "CPU us/request of the process under test" is mockllm's own ` +
  `CPU for the direct column and the proxy's alone (nginx: its one worker) otherwise, from /proc/PID/stat. ` +
  `Agent: ${agentNote}. Peer gateways from npm: ` +
  (peerNotes.length ? `${peerNotes.join(', ')} (their own process's CPU).` :
    'none installed under bench/peers (npm ci --prefix bench/peers), not measured.'));
console.log(out.join('\n'));
