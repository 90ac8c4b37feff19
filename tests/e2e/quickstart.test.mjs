// The README's first command works as written: deploy/quickstart.sh builds,
// runs the whole gateway (mockllm upstream, tollgate-cp on LMDB, an enrolled
// tollgate-agent), sends a request and a stream through the agent, shows the
// two settled ledger rows and the balances, prints the environment for an
// OpenAI SDK, and stops everything on SIGTERM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { ROOT, start, until } from './lib/proc.mjs';

const script = path.join(ROOT, 'deploy/quickstart.sh');

function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

// Removes the state directory a run printed (the quickstart keeps it).
function removeState(out) {
  const m = out.match(/^state directory: (\/tmp\/tollgate-quickstart\.\w+)$/m);
  if (m) rmSync(m[1], { recursive: true, force: true });
}

function openaiEnv(out) {
  const m = out.match(/^export OPENAI_BASE_URL=(http:\/\/127\.0\.0\.1:(\d+)\/v1) OPENAI_API_KEY=(\S+)$/m);
  assert.ok(m, `no OPENAI_BASE_URL line in:\n${out.slice(-3000)}`);
  return { baseURL: m[1], port: Number(m[2]), apiKey: m[3] };
}

// Every port the quickstart reports in its summary: mockllm, the control
// plane's gRPC and HTTP ports, the agent.
function ports(out) {
  const want = ['mockllm \\(upstream\\)', 'tollgate-cp gRPC', 'tollgate-cp HTTP', 'tollgate-agent'];
  return want.map((name) => {
    const m = out.match(new RegExp(`^  ${name} +(?:http://)?127\\.0\\.0\\.1:(\\d+)$`, 'm'));
    assert.ok(m, `no '${name}' line in the summary:\n${out.slice(-3000)}`);
    return Number(m[1]);
  });
}

// The ledger table: one line per usage row, as a user reads it.
function ledgerRows(out) {
  const lines = out.split('\n');
  const head = lines.findIndex((l) => /^MODEL +UPSTREAM_MODEL +CHANNEL +ROUTE_TYPE +BUCKET +IN_TOK +OUT_TOK +COST_USD$/.test(l));
  assert.ok(head >= 0, `no ledger table in:\n${out.slice(-3000)}`);
  const rows = [];
  for (const l of lines.slice(head + 1)) {
    const f = l.trim().split(/\s+/);
    if (f.length !== 8) break;
    rows.push({ model: f[0], upstream: f[1], channel: f[2], routeType: f[3], bucket: f[4],
      input: Number(f[5]), output: Number(f[6]), cost: f[7] });
  }
  return rows;
}

function checkOutput(out) {
  assert.match(out, /^state directory: \/tmp\/tollgate-quickstart\./m);
  // the non-streaming answer and the stream, through the agent
  assert.match(out, /"object":"chat\.completion"/);
  assert.match(out, /^x-tollgate-route: gpt-4o-mini; channel=mock-direct/mi);
  assert.match(out, /data: \[DONE\]/);
  // four settled usage rows: the chat completion and the stream on gpt-4o-mini, the
  // Messages request on the Anthropic channel, the embedding; each with a non-zero cost
  const rows = ledgerRows(out);
  assert.equal(rows.length, 4, out.slice(-3000));
  const claude = rows.find((r) => r.model === 'claude-sonnet-4-5');
  assert.ok(claude && claude.channel === 'mock-anthropic' && claude.input > 0 && claude.output > 0, JSON.stringify(rows));
  const emb = rows.find((r) => r.model === 'text-embedding-3-small');
  assert.ok(emb && emb.input > 0 && Number(emb.cost) > 0, JSON.stringify(rows));
  for (const r of rows.filter((x) => x.model === 'gpt-4o-mini')) {
    assert.equal(r.model, 'gpt-4o-mini');
    assert.equal(r.upstream, 'gpt-4o-mini-2024-07-18');
    assert.equal(r.channel, 'mock-direct');
    assert.equal(r.routeType, 'ROUTE_TYPE_DIRECT');
    assert.equal(r.bucket, 'credit');
    assert.ok(r.input > 0 && r.output > 0, JSON.stringify(r));
    assert.match(r.cost, /^\d+\.\d{9}$/);
    assert.ok(Number(r.cost) > 0, `zero cost: ${JSON.stringify(r)}`);
  }
  // the balances: credit paid for both requests, wallet untouched
  const bal = out.match(/^BUCKET +CURRENCY +BALANCE.*\n(.*)\n(.*)$/m);
  assert.ok(bal, `no balances in:\n${out.slice(-3000)}`);
  const [credit, wallet] = [bal[1], bal[2]].map((l) => l.trim().split(/\s+/));
  assert.equal(credit[0], 'credit');
  assert.ok(Number(credit[2]) < 10 && Number(credit[2]) > 9.99, bal[0]);
  assert.deepEqual(wallet.slice(0, 3), ['wallet', 'USD', '5.00']);
  assert.match(out, /^export ANTHROPIC_BASE_URL=http:\/\/127\.0\.0\.1:\d+ ANTHROPIC_API_KEY=\S+$/m);
}

test('quickstart --no-wait runs the gateway, settles two requests, prints the environment, then stops', { timeout: 600000 }, async () => {
  const p = start('bash', [script, '--no-wait', '--no-install'], { cwd: ROOT });
  const { code } = await p.exited;
  const out = p.output();
  try {
    assert.equal(code, 0, out.slice(-3000));
    checkOutput(out);
    openaiEnv(out);
    assert.match(out, /quickstart: stopped/);
    for (const port of ports(out)) assert.equal(await portOpen(port), false, `port ${port} still open after exit`);
  } finally {
    removeState(out);
  }
});

test('quickstart keeps running: the openai SDK works with the printed environment; SIGTERM stops everything', { timeout: 600000 }, async () => {
  const p = start('bash', [script, '--no-install'], { cwd: ROOT });
  try {
    await until(() => /running; Ctrl-C stops everything/.test(p.output()) || p.child.exitCode !== null,
      { timeoutMs: 300000, what: 'quickstart to be running' });
    const out = p.output();
    assert.equal(p.child.exitCode, null, `quickstart exited:\n${out.slice(-3000)}`);
    checkOutput(out);
    const env = openaiEnv(out);
    const all = ports(out);
    for (const port of all) assert.equal(await portOpen(port), true, `port ${port} serves while quickstart runs`);

    const client = new OpenAI({ baseURL: env.baseURL, apiKey: env.apiKey, maxRetries: 0, timeout: 15000 });
    const r = await client.chat.completions.create({ model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Hello from the SDK.' }] });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.model, 'gpt-4o-mini-2024-07-18');
    assert.ok(r.choices[0].message.content.length > 0);
    assert.ok(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);
    // the Anthropic SDK with the printed line, on the Claude model and on gpt-4o-mini (converted)
    const am = out.match(/^export ANTHROPIC_BASE_URL=(\S+) ANTHROPIC_API_KEY=(\S+)$/m);
    const anthropic = new Anthropic({ baseURL: am[1], apiKey: am[2], maxRetries: 0, timeout: 15000 });
    for (const model of ['claude-sonnet-4-5', 'gpt-4o-mini']) {
      const m = await anthropic.messages.create({ model, max_tokens: 64,
        messages: [{ role: 'user', content: 'Hello from the Anthropic SDK.' }] });
      assert.equal(m.type, 'message');
      assert.ok(m.content[0].text.length > 0 && m.usage.output_tokens > 0, JSON.stringify(m));
    }
    const c2 = await client.chat.completions.create({ model: 'claude-sonnet-4-5', max_tokens: 64,
      messages: [{ role: 'user', content: 'Hello Claude, from the OpenAI SDK.' }] });
    assert.ok(c2.choices[0].message.content.length > 0);

    const { code, signal } = await p.stop('SIGTERM', 20000);
    assert.equal(signal, null, 'quickstart must exit by itself on SIGTERM, not be killed');
    assert.equal(code, 0, p.output().slice(-3000));
    assert.match(p.output(), /quickstart: stopped/);
    for (const port of all) assert.equal(await portOpen(port), false, `port ${port} still open after SIGTERM`);
  } finally {
    await p.stop('SIGTERM', 20000);
    removeState(p.output());
  }
});
