// The README's first command works as written: deploy/quickstart.sh builds,
// starts what exists, shows real requests and their results, prints the
// environment to point an SDK at, and stops everything on SIGTERM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { ROOT, start, until } from './lib/proc.mjs';

const script = path.join(ROOT, 'deploy/quickstart.sh');

function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

function exportedPort(out) {
  const m = out.match(/^export OPENAI_BASE_URL=http:\/\/127\.0\.0\.1:(\d+)\/v1 OPENAI_API_KEY=\S+$/m);
  assert.ok(m, `no OPENAI_BASE_URL line in:\n${out.slice(-3000)}`);
  return Number(m[1]);
}

test('quickstart --no-wait shows a request, a stream and the environment, then stops', { timeout: 600000 }, async () => {
  const p = start('bash', [script, '--no-wait', '--no-install'], { cwd: ROOT });
  const { code } = await p.exited;
  const out = p.output();
  assert.equal(code, 0, out.slice(-3000));
  assert.match(out, /"object":"chat\.completion"/);
  assert.match(out, /"usage":\{"prompt_tokens":\d+,"completion_tokens":\d+/);
  assert.match(out, /data: \[DONE\]/);
  assert.match(out, /^state directory: \/tmp\/tollgate-quickstart\./m);
  const port = exportedPort(out);
  assert.equal(await portOpen(port), false, 'the emulator must be stopped when quickstart exits');
});

test('quickstart keeps running until SIGTERM, then stops everything', { timeout: 600000 }, async () => {
  const p = start('bash', [script, '--no-install'], { cwd: ROOT });
  await until(() => /running; Ctrl-C stops everything/.test(p.output()), { timeoutMs: 300000, what: 'quickstart to be running' });
  const port = exportedPort(p.output());
  assert.equal(await portOpen(port), true, 'the emulator serves while quickstart runs');
  await p.stop('SIGTERM', 15000);
  assert.match(p.output(), /quickstart: stopped/);
  assert.equal(await portOpen(port), false, 'SIGTERM must stop the emulator too');
});
