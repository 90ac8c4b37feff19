// The ledger benchmark in quick mode, as CI runs it: it appends in batches of
// 1..10000 with fsync, builds a 20,000-row ledger, queries one key, sums,
// exports, verifies the hash chain and retains 10%. The bench checks its own
// query results against what it generated and exits 1 on a mismatch; this
// test checks it ran to the end and that the numbers it prints agree.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { bin, tmpdir } from './lib/proc.mjs';

function run(cmd, args, timeoutMs) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr });
    });
  });
}

// Cells of the markdown table row whose first cell starts with `label`.
function row(out, label) {
  const line = out.split('\n').find((l) => l.startsWith(`| ${label}`));
  assert.ok(line, `no "${label}" row in:\n${out}`);
  return line.split('|').slice(1, -1).map((c) => c.trim());
}

test('ledger_bench --quick runs end to end and its numbers agree', async () => {
  const dir = tmpdir('tg-ledger-bench-');
  const r = await run(bin('bench/store/ledger_bench'), ['--quick', '--dir', dir], 120000);
  assert.equal(r.code, 0, `bench failed (${r.code}): ${r.stderr}\n${r.stdout}`);

  // Every batch size ran, with and without fsync, and moved rows.
  for (const [batch, sync] of [['1', 'fsync'], ['100', 'fsync'], ['1000', 'fsync'],
    ['10000', 'fsync'], ['1000', 'none'], ['10000', 'none']]) {
    const cells = r.stdout.split('\n').filter((l) => l.startsWith(`| ${batch} | ${sync} |`));
    assert.equal(cells.length, 1, `batch ${batch} ${sync} missing`);
    const c = cells[0].split('|').slice(1, -1).map((x) => x.trim());
    for (const i of [2, 5, 6]) assert.ok(Number(c[i]) > 0, `batch ${batch} ${sync}: ${cells[0]}`);
  }

  // One key: the scan and the sum saw the same rows, about 1% of 20,000.
  const scan = row(r.stdout, 'key key-hot (warm)');
  const sum = row(r.stdout, 'sum of key key-hot (warm)');
  assert.equal(scan[1], sum[1]);
  assert.ok(Number(scan[1]) > 100 && Number(scan[1]) < 400, `hot key rows: ${scan[1]}`);
  assert.equal(row(r.stdout, 'export all')[1], '20000');
  assert.equal(row(r.stdout, 'verify chain')[1], '20000');
  assert.equal(row(r.stdout, 'retain oldest 10%')[1], '2000');

  // It cleaned up after itself.
  assert.deepEqual(readdirSync(dir), []);
});
