// bench/report.mjs pairs the targets run by run: the "agent / nginx,
// paired" column is the median of each run's own ratio, and an added
// latency the median of each run's own difference from direct, so that a
// machine whose speed drifts between runs does not decide the comparison.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from './lib/proc.mjs';

function report(lines) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tg-report-'));
  try {
    const f = path.join(dir, 'results.tsv');
    writeFileSync(f, lines.map((l) => l.join('\t')).join('\n') + '\n');
    const r = spawnSync('node', [path.join(ROOT, 'bench/report.mjs'), f, 'started by the test', '3', '4', '100', '10', '1024'],
      { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const cells = (out, label) => {
  const row = out.split('\n').find((l) => l.includes(label));
  assert.ok(row, `no row ${label} in\n${out}`);
  return row.split('|').map((c) => c.trim());
};

test('a slow run moves the ratio of medians but not the paired ratio', () => {
  // runs 1 and 3 on a fast machine, run 2 on one a third slower: the agent
  // costs 0.9x nginx in runs 1 and 2, 1.19x in run 3
  const out = report([
    ['small', 'nginx', 'cpu_us_per_req', 30, 1], ['small', 'agent', 'cpu_us_per_req', 27, 1],
    ['small', 'nginx', 'cpu_us_per_req', 40, 2], ['small', 'agent', 'cpu_us_per_req', 36, 2],
    ['small', 'nginx', 'cpu_us_per_req', 31, 3], ['small', 'agent', 'cpu_us_per_req', 36.9, 3],
    ['small', 'direct', 'cpu_us_per_req', 10, 1],
  ]);
  const c = cells(out, 'small (1 KB, 32 conns) | CPU us/request');
  assert.equal(c[4], '31.0'); // nginx median
  assert.equal(c[5], '36.0'); // agent median
  assert.equal(c[7], '1.16x'); // 36 / 31: the medians come from different runs
  assert.equal(c[8], '0.90x'); // the runs' own ratios: 0.90, 0.90, 1.19
});

test('added latency is the median of the runs own differences, and a run one side lacks is left out', () => {
  const out = report([
    ['small_c1', 'direct', 'p50_us', 40, 1], ['small_c1', 'nginx', 'p50_us', 80, 1], ['small_c1', 'agent', 'p50_us', 85, 1],
    ['small_c1', 'direct', 'p50_us', 70, 2], ['small_c1', 'nginx', 'p50_us', 120, 2], ['small_c1', 'agent', 'p50_us', 110, 2],
    ['small_c1', 'nginx', 'p50_us', 90, 3], ['small_c1', 'agent', 'p50_us', 500, 3], // run 3: direct failed to record
  ]);
  const c = cells(out, 'added p50 latency us');
  assert.equal(c[4], '45.0'); // nginx: 40 and 50
  assert.equal(c[5], '42.5'); // agent: 45 and 40 (run 3 has no direct to compare with)
  const p = cells(out, 'small (1 KB, 1 conn) | p50 latency us');
  assert.equal(p[8], '1.06x'); // the runs' ratios 1.06, 0.92, 5.56: one slow run does not decide
});

test('a direct that failed leaves the added rows empty, and results without run numbers are not paired', () => {
  const out = report([
    ['small_c1', 'direct', 'error', 1, 1], ['small_c1', 'nginx', 'p50_us', 80, 1], ['small_c1', 'agent', 'p50_us', 85, 1],
  ]);
  const c = cells(out, 'added p50 latency us');
  assert.equal(c[4], 'n/a');
  assert.equal(c[5], 'n/a');
  const old = report([
    ['small', 'nginx', 'cpu_us_per_req', 30], ['small', 'agent', 'cpu_us_per_req', 27],
    ['small', 'nginx', 'cpu_us_per_req', 40], ['small', 'agent', 'cpu_us_per_req', 60],
    ['small', 'nginx', 'cpu_us_per_req', 31], ['small', 'agent', 'cpu_us_per_req', 31],
  ]);
  const o = cells(old, 'small (1 KB, 32 conns) | CPU us/request');
  assert.equal(o[7], '1.00x'); // 31 / 31: the ratio of medians
  assert.equal(o[8], ''); // no runs to pair
});
