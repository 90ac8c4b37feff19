// Interop the other way round: rpc/'s client (rpc/testing/echo_client, C
// over the gRPC core) against an independent server, @grpc/grpc-js
// (rpc/testing/echo_server_node.mjs). What the agent and tollctl rely on:
// unary replies, metadata sent and trailers read, status codes with their
// messages, deadlines, a server stream, and a Sync-style stream that comes
// back by itself, with backoff, when the server restarts.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { ROOT, bin, start, until } from './lib/proc.mjs';

const nodeServer = path.join(ROOT, 'rpc/testing/echo_server_node.mjs');
const procs = [];
after(async () => { for (const p of procs) await p.stop('SIGKILL'); });

async function startNode(args = []) {
  const p = start(process.execPath, [nodeServer, ...args]);
  procs.push(p);
  const port = await until(() => { const m = /^(\d+)\n/.exec(p.output()); return m && Number(m[1]); },
    { timeoutMs: 10000, what: 'the grpc-js server to print its port' });
  return { p, port };
}

// Runs echo_client to completion; resolves with its JSON lines.
function client(port, args, timeoutMs = 15000) {
  return new Promise((resolve, reject) => {
    const c = spawn(bin('rpc/testing/echo_client'), ['--target', `127.0.0.1:${port}`, ...args]);
    let out = '';
    let errOut = '';
    c.stdout.on('data', (d) => { out += d; });
    c.stderr.on('data', (d) => { errOut += d; });
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('exit', (code) => {
      clearTimeout(t);
      if (code !== 0) reject(new Error(`echo_client exited ${code}: ${errOut}`));
      else resolve(out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)));
    });
  });
}

let server;
test('unary call with metadata; trailer and deadline come back', async () => {
  server = await startNode();
  const [r] = await client(server.port, ['--md', 'authorization=Bearer tg-agent-7', '--timeout', '4000',
    'say', 'hello from C', '0', 'authorization']);
  assert.equal(r.rc, 0);
  assert.equal(r.code, 0);
  assert.equal(r.text, 'hello from C');
  assert.equal(r.header, 'Bearer tg-agent-7');
  assert.equal(r.trailer, 'done');
  assert.ok(r.deadline_ms > 2000 && r.deadline_ms <= 4000, `deadline_ms ${r.deadline_ms}`);
});

test('status code and message reach rpc/ client', async () => {
  const [r] = await client(server.port, ['fail', '9', 'balance bucket wallet: insufficient funds']);
  assert.equal(r.rc, -7); // TG_RPC_ESTATUS
  assert.equal(r.code, 9); // FAILED_PRECONDITION
  assert.equal(r.message, 'balance bucket wallet: insufficient funds');
});

test('deadline exceeded against a slow handler', async () => {
  const t0 = Date.now();
  const [r] = await client(server.port, ['--timeout', '200', 'say', 'slow', '3000']);
  assert.equal(r.code, 4); // DEADLINE_EXCEEDED
  assert.ok(Date.now() - t0 < 2500);
});

test('server stream of 1000 messages arrives complete and in order', async () => {
  const [r] = await client(server.port, ['count', '1000']);
  assert.deepEqual(r, { rc: 0, code: 0, messages: 1000, in_order: true });
});

test('reconnecting stream survives a server restart on the same port', async () => {
  const a = await startNode(['--name', 'A']);
  const c = spawn(bin('rpc/testing/echo_client'), ['--target', `127.0.0.1:${a.port}`, 'watch', 'B', '3']);
  let out = '';
  c.stdout.on('data', (d) => { out += d; });
  const exited = new Promise((resolve) => c.on('exit', (code) => resolve(code)));
  const kill = setTimeout(() => c.kill('SIGKILL'), 30000);
  const lines = () => out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  await until(() => lines().filter((l) => l.msg === 'A').length >= 3, { timeoutMs: 10000, what: 'messages from A' });
  await a.p.stop('SIGTERM');
  // While nothing listens, attempts fail and the delays grow.
  await until(() => lines().filter((l) => 'status' in l).length >= 3, { timeoutMs: 10000, what: 'failed attempts' });
  await startNode(['--name', 'B', '--port', String(a.port)]);
  const code = await exited;
  clearTimeout(kill);
  assert.equal(code, 0, out);
  const all = lines();
  assert.equal(all.filter((l) => l.msg === 'B').length, 3);
  const statuses = all.filter((l) => 'status' in l);
  assert.ok(statuses.every((s) => s.status !== 0), JSON.stringify(statuses));
  const d = statuses.map((s) => s.delay_ms);
  for (let i = 1; i < Math.min(d.length, 4); i++) assert.ok(d[i] > d[i - 1], `delays ${d}`);
  assert.ok(d.every((x) => x <= 1000), `delays ${d}`);
});
