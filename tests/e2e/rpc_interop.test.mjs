// Interop: rpc/'s server (rpc/testing/echo_server, C over the gRPC core)
// called by an independent gRPC implementation, @grpc/grpc-js, with the
// contract loaded from rpc/testdata/echo.proto by @grpc/proto-loader. What a
// user of any official gRPC client would check: replies, metadata both ways,
// status codes with their messages, server streams, deadlines, cancellation
// noticed by the server, and a clean exit on SIGTERM.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { ROOT, bin, start, until } from './lib/proc.mjs';

const def = protoLoader.loadSync(path.join(ROOT, 'rpc/testdata/echo.proto'), { longs: Number, defaults: true });
const Echo = grpc.loadPackageDefinition(def).tollgate.test.v1.Echo;

let server;
let client;

// Resolves with the port echo_server prints on its first stdout line.
function portOf(proc) {
  return until(() => {
    const m = /^(\d+)\n/.exec(proc.output());
    return m && Number(m[1]);
  }, { timeoutMs: 10000, what: 'echo_server to print its port' });
}

const unary = (method, req, md = new grpc.Metadata(), opts = {}) =>
  new Promise((resolve, reject) => {
    const call = client[method](req, md, opts, (err, reply) => (err ? reject(err) : resolve({ reply, call })));
  });

before(async () => {
  server = start(bin('rpc/testing/echo_server'), ['--grace-ms', '1000']);
  const port = await portOf(server);
  client = new Echo(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
});

after(async () => {
  client?.close();
  await server?.stop('SIGKILL');
});

test('unary call round-trips and echoes request metadata', async () => {
  const md = new grpc.Metadata();
  md.set('authorization', 'Bearer tg-test-123');
  const headers = new Promise((resolve) => {
    const call = client.Say({ text: 'hello', echoHeader: 'authorization' }, md,
      { deadline: Date.now() + 5000 }, () => {});
    call.on('metadata', resolve);
  });
  const { reply } = await unary('Say', { text: 'hello', echoHeader: 'authorization' }, md,
    { deadline: Date.now() + 5000 });
  assert.equal(reply.text, 'hello');
  assert.equal(reply.headerValue, 'Bearer tg-test-123');
  assert.match(reply.peer, /127\.0\.0\.1:\d+/);
  assert.ok(reply.deadlineMs > 3000 && reply.deadlineMs <= 5000, `deadline_ms ${reply.deadlineMs}`);
  assert.equal((await headers).get('x-echo-method')[0], '/tollgate.test.v1.Echo/Say');
});

test('without a deadline the handler sees none', async () => {
  const { reply } = await unary('Say', { text: 'x' });
  assert.equal(reply.deadlineMs, -1);
});

test('error status and its message reach the client', async () => {
  await assert.rejects(unary('Fail', { code: grpc.status.INVALID_ARGUMENT, message: 'name: must not be empty' }),
    (err) => {
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(err.details, 'name: must not be empty');
      return true;
    });
  await assert.rejects(unary('Fail', { code: grpc.status.PERMISSION_DENIED, message: 'key revoked' }),
    (err) => err.code === grpc.status.PERMISSION_DENIED && err.details === 'key revoked');
});

test('a malformed request is INVALID_ARGUMENT naming the type', async () => {
  // Bytes that are not a SayRequest: field 1 declared as a 100-byte string, 1 byte follows.
  const raw = new grpc.Client(client.getChannel().getTarget(), grpc.credentials.createInsecure());
  const err = await new Promise((resolve) => raw.makeUnaryRequest('/tollgate.test.v1.Echo/Say',
    (b) => b, (b) => b, Buffer.from([0x0a, 100, 0x41]), (e) => resolve(e)));
  raw.close();
  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  assert.match(err.details, /tollgate\.test\.v1\.SayRequest/);
});

test('an unknown method is UNIMPLEMENTED', async () => {
  const raw = new grpc.Client(client.getChannel().getTarget(), grpc.credentials.createInsecure());
  const err = await new Promise((resolve) => raw.makeUnaryRequest('/tollgate.test.v1.Echo/Nope',
    (b) => b, (b) => b, Buffer.alloc(0), (e) => resolve(e)));
  raw.close();
  assert.equal(err.code, grpc.status.UNIMPLEMENTED);
  assert.match(err.details, /Nope/);
});

test('server stream delivers N messages in order, then OK', async () => {
  const N = 500;
  const got = [];
  await new Promise((resolve, reject) => {
    const s = client.Count({ n: N, payloadBytes: 1024 });
    s.on('data', (m) => got.push(m));
    s.on('error', reject);
    s.on('status', (st) => (st.code === grpc.status.OK ? resolve() : reject(new Error(st.details))));
  });
  assert.equal(got.length, N);
  got.forEach((m, i) => { assert.equal(m.index, i); assert.equal(m.payload.length, 1024); });
});

test('deadline exceeded is reported to the client', async () => {
  const t0 = Date.now();
  await assert.rejects(unary('Say', { text: 'slow', delayMs: 3000 }, new grpc.Metadata(),
    { deadline: Date.now() + 200 }), (err) => err.code === grpc.status.DEADLINE_EXCEEDED);
  assert.ok(Date.now() - t0 < 2000, 'the client waited for the slow handler');
});

test('client cancel of a pushed stream is noticed by the server', async () => {
  const stats = async () => (await unary('Stats', {})).reply;
  const before = await stats();
  const s = client.Watch({ intervalMs: 10 });
  let n = 0;
  await new Promise((resolve, reject) => {
    s.on('data', () => { if (++n === 3) resolve(); });
    s.on('error', (e) => { if (e.code !== grpc.status.CANCELLED) reject(e); });
  });
  assert.equal((await stats()).activeStreams, before.activeStreams + 1);
  s.cancel();
  const after = await until(async () => {
    const st = await stats();
    return st.cancelledStreams === before.cancelledStreams + 1 && st;
  }, { timeoutMs: 5000, what: 'the server to see the cancel' });
  assert.equal(after.activeStreams, before.activeStreams);
});

test('SIGTERM ends open streams and the server exits 0', async () => {
  const s = client.Watch({});
  const ended = new Promise((resolve) => {
    s.on('error', (e) => resolve(e.code));
    s.on('status', (st) => resolve(st.code));
    s.on('data', () => {});
  });
  await new Promise((resolve) => s.once('data', resolve));
  const t0 = Date.now();
  const exit = await server.stop('SIGTERM', 10000);
  assert.deepEqual(exit, { code: 0, signal: null }, server.output());
  assert.ok(Date.now() - t0 < 5000, `shutdown took ${Date.now() - t0} ms`);
  const code = await ended;
  assert.notEqual(code, grpc.status.OK);
});
