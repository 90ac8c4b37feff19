// deploy/cluster.sh --no-wait as an operator runs it: three etcd members,
// two tollgate-cp replicas, two agents in two regions, mTLS everywhere with
// certificates it makes; under load on both agents it kills -9 the settling
// leader and an etcd member and checks that every answer's usage settled
// exactly once (ledger rows = answers, sums to the nano-unit, both regions).
// The script exits 0 only then; this test also reads what it printed and
// checks that nothing it started is left listening.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ROOT, start } from './lib/proc.mjs';

function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

test('cluster.sh --no-wait: failover of the leader and an etcd member under load, every answer settled once', { timeout: 240000 }, async () => {
  const p = start('bash', [path.join(ROOT, 'deploy/cluster.sh'), '--no-wait', '--no-install'],
    { cwd: ROOT, env: { ...process.env, TG_BIN: process.env.TG_BIN } });
  const { code } = await p.exited;
  const out = p.output();
  const state = /^state directory: (\/tmp\/tollgate-cluster\.\w+)$/m.exec(out);
  try {
    assert.equal(code, 0, out.slice(-4000));
    // every endpoint printed, mTLS on the control planes
    const ports = [...out.matchAll(/^ {2}(?:etcd e\d|mockllm \(upstream\)|tollgate-cp cp\d (?:gRPC|HTTP)|agent r\d(?: metrics)?) +(?:https?:\/\/)?127\.0\.0\.1:(\d+)/gm)]
      .map((m) => Number(m[1]));
    assert.equal(ports.length, 12, out.slice(-4000));
    assert.match(out, /^export OPENAI_BASE_URL=http:\/\/127\.0\.0\.1:\d+\/v1 OPENAI_API_KEY=\S+$/m);
    assert.match(out, /^export ANTHROPIC_BASE_URL=http:\/\/127\.0\.0\.1:\d+ ANTHROPIC_API_KEY=\S+$/m);
    assert.match(out, /grpc 127\.0\.0\.1:\d+ \(mTLS\)|tollgate-cp cp1 gRPC/);
    // the agents were on both replicas before the kill
    const on = [...out.matchAll(/^agent r(\d) is connected to (\S+)$/gm)].map((m) => m[2]);
    assert.equal(on.length, 2);
    assert.notEqual(on[0], on[1]);
    assert.match(out, /^kill -9 cp\d \(the settling leader, pid \d+\) and etcd member e1/m);
    assert.match(out, /^cp\d settles after \d+ ms$/m);
    // exactly once, both regions, exact sums
    const m = /^answers: (\d+); ledger usage rows: (\d+) \(by region: (\d+) r1, (\d+) r2\); duplicated: 0; missing: 0; without an answer: 0$/m.exec(out);
    assert.ok(m, out.slice(-4000));
    assert.equal(m[1], m[2]);
    assert.ok(Number(m[3]) > 1 && Number(m[4]) > 1, m[0]);
    const s = /^sum of the answers' x-tollgate-cost: ([\d.]+) USD; sum of the ledger rows: ([\d.]+) USD$/m.exec(out);
    assert.ok(s && s[1] === s[2] && Number(s[1]) > 0, out.slice(-4000));
    assert.match(out, /^cluster: stopped/m);
    for (const port of ports) assert.equal(await portOpen(port), false, `port ${port} still open after exit`);
  } finally {
    if (state) rmSync(state[1], { recursive: true, force: true });
  }
});
