// bench/run.sh end to end, shortened: it must start mockllm and nginx, drive
// every scenario, clean up after itself and print the markdown table with a
// number in every direct and nginx cell, and "not yet built" for the agent;
// the same for the TLS table (nginx proxy_pass https to a TLS upstream made
// with a test CA). Peers from npm are left out (--no-peers): optional.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { ROOT, BIN, bin } from './lib/proc.mjs';

test('bench/run.sh --quick prints a complete table and leaves nothing behind', { timeout: 240000 }, () => {
  bin('tools/mockllm/mockllm');
  const before = new Set(readdirSync('/tmp').filter((f) => f.startsWith('tg-bench.')));
  const r = spawnSync(path.join(ROOT, 'bench/run.sh'), ['--quick', '--duration', '1', '--streams', '200', '--no-peers'], {
    env: { ...process.env, TG_BIN: BIN, TG_AGENT_CMD: '', TG_AGENT_URL: '' }, encoding: 'utf8', timeout: 230000,
  });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  // the first table, then the TLS table after its title line
  const [main, tls = ''] = r.stdout.split(/^TLS upstream .*$/m);
  const tableRows = (text) => text.split('\n\n').find((b) => b.startsWith('| '))
    .split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| Scenario'));
  const rows = tableRows(main);
  assert.equal(rows.length, 14, r.stdout);
  const tlsRows = tableRows(tls.trim());
  assert.equal(tlsRows.length, 7, r.stdout);
  for (const row of tlsRows) {
    const [, scenario, metric, nginx, agent] = row.split('|').map((c) => c.trim());
    assert.equal(agent, 'not yet built', row);
    assert.match(nginx, /^-?[0-9.]+( ms)?$/, `TLS ${scenario} ${metric}: nginx cell ${nginx}`);
  }
  for (const row of rows) {
    const cells = row.split('|').map((c) => c.trim());
    const [, scenario, metric, direct, nginx, agent] = cells;
    assert.equal(agent, 'not yet built', row);
    assert.match(nginx, /^-?[0-9.]+( ms| KB)?$/, `${scenario} ${metric}: nginx cell ${nginx}`);
    if (!metric.startsWith('added')) assert.match(direct, /^[0-9.]+( ms| KB)?$/, `${scenario} ${metric}: direct cell ${direct}`);
  }
  const rps = rows.find((l) => l.includes('small (1 KB, 32 conns) | requests/s'));
  assert.ok(Number(rps.split('|')[3]) > 100, rps);
  // the CPU split: user space is part of the total
  const cpu = (label) => Number(rows.find((l) => l.includes(`small (1 KB, 32 conns) | ${label}`)).split('|')[4]);
  assert.ok(cpu('... of which in user space') <= cpu('CPU us/request'), r.stdout);
  const after = readdirSync('/tmp').filter((f) => f.startsWith('tg-bench.') && !before.has(f));
  assert.deepEqual(after, [], 'temp directory removed');
});
