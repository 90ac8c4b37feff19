// The summary of a bench/soak.sh run: reads its CSV (one row per 10 s sample)
// and prints, per series, the mean of the first and of the last W minutes
// (W = 5, or a third of the run when that is shorter), the means of the
// middle and last thirds, and a verdict. The rule, stated in the output too:
//   flat  = |mean(last third) - mean(middle third)| <= tol, and no growth
//           trend: NOT (each of the last four sixths' means above the one
//           before AND the last sixth's mean above the third sixth's by more
//           than tol),
//   tol   = max(10 % of the middle third's mean, the series' absolute floor)
//           (floors: RSS 1 MiB, open files 4, outbox 50 records, disk 1 MiB),
// else "NOT FLAT" with the slope of the last two thirds (per minute). Disk
// series also get bytes per request sent (growth over the run / the
// requests sent), since the ledger is append-only and must grow.
//
//   node soak_summary.mjs CSV
import { readFileSync } from 'node:fs';

const lines = readFileSync(process.argv[2], 'utf8').trim().split('\n');
const head = lines[0].split(',');
const rows = lines.slice(1).map((l) => l.split(',').map(Number));
const col = (name) => rows.map((r) => r[head.indexOf(name)]);
const t = col('t_s');
const dur = t[t.length - 1] - t[0];
const sent = col('sent');
const nreq = sent[sent.length - 1] - sent[0];

const SERIES = [
  ['agent_rss_anon_kb', 'kB', 1024], ['cp_rss_anon_kb', 'kB', 1024],
  ['agent_fds', '', 4], ['cp_fds', '', 4], ['outbox_records', '', 50],
  ['store_bytes', 'B', 1 << 20], ['ledger_bytes', 'B', 1 << 20], ['agent_dir_bytes', 'B', 1 << 20],
];

const mean = (a) => (a.length ? a.reduce((x, y) => x + y, 0) / a.length : NaN);
function within(a, lo, hi) { return a.filter((_, k) => t[k] - t[0] >= lo && t[k] - t[0] <= hi); }
function slopePerMin(ts, ys) {
  const mt = mean(ts), my = mean(ys);
  let nu = 0, de = 0;
  for (let k = 0; k < ts.length; k++) { nu += (ts[k] - mt) * (ys[k] - my); de += (ts[k] - mt) ** 2; }
  return de ? (nu / de) * 60 : 0;
}

const w = Math.min(300, dur / 3);
const fmt = (x) => (Number.isFinite(x) ? (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(1)) : '-');
console.log(`soak summary: ${rows.length} samples over ${(dur / 60).toFixed(1)} min, ${nreq} requests sent`);
console.log(`first/last window: ${(w / 60).toFixed(1)} min each`);
console.log('');
console.log('| series | unit | first window mean | last window mean | middle third | last third | verdict |');
console.log('|---|---|---|---|---|---|---|');
const notes = [];
let allFlat = true;
for (const [name, unit, floor] of SERIES) {
  if (head.indexOf(name) < 0) continue;
  const y = col(name);
  const first = mean(within(y, 0, w));
  const last = mean(within(y, dur - w, dur));
  const mid = mean(within(y, dur / 3, (2 * dur) / 3));
  const lt = mean(within(y, (2 * dur) / 3, dur));
  const tol = Math.max(0.1 * Math.abs(mid), floor);
  const six = [];
  for (let s = 0; s < 6; s++) six.push(mean(within(y, (s * dur) / 6, ((s + 1) * dur) / 6)));
  const rising = six[3] > six[2] && six[4] > six[3] && six[5] > six[4] && six[5] - six[2] > tol;
  const flat = Math.abs(lt - mid) <= tol && !rising;
  let verdict = flat ? 'flat' : 'NOT FLAT';
  if (!flat) {
    allFlat = false;
    const ts = t.filter((x) => x - t[0] >= dur / 3);
    const ys = y.filter((_, k) => t[k] - t[0] >= dur / 3);
    verdict += ` (${fmt(slopePerMin(ts, ys))} ${unit || 'per'}/min${rising ? ', rising' : ''})`;
  }
  if (unit === 'B' && nreq > 0) notes.push(`${name}: ${fmt((y[y.length - 1] - y[0]) / nreq)} B per request sent over the run`);
  console.log(`| ${name} | ${unit} | ${fmt(first)} | ${fmt(last)} | ${fmt(mid)} | ${fmt(lt)} | ${verdict} |`);
}
console.log('');
for (const n of notes) console.log(n);
console.log('rule: flat = |mean(last third) - mean(middle third)| <= max(10 % of the middle third, floor) and not'
  + ' rising through the last four sixths by more than that; floors: RSS 1 MiB, fds 4, outbox 50, disk 1 MiB');
console.log(`verdict: ${allFlat ? 'all series flat' : 'some series NOT flat (see the table)'}`);
