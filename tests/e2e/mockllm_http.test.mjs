// mockllm's HTTP/1.1 layer as a gateway's upstream client meets it: raw
// sockets for pipelining, chunked request bodies, Expect: 100-continue,
// malformed requests and connection handling; plus --threads (shared
// counters across loops), the recording ring and routing errors.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { bin, start } from './lib/proc.mjs';

let mock;
before(async () => { mock = await startMock(['--threads', '2', '--record-max', '3']); });
after(async () => { await mock?.stop(); });

// Sends raw bytes, collects everything until the server closes or idleMs of
// silence (bounded by timeoutMs). Returns the text received.
function raw(port, chunks, { idleMs = 300, timeoutMs = 5000, gapMs = 0 } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    let idle;
    const done = () => { clearTimeout(idle); clearTimeout(hard); s.destroy(); resolve(out); };
    const hard = setTimeout(done, timeoutMs);
    const arm = () => { clearTimeout(idle); idle = setTimeout(done, idleMs); };
    s.on('data', (d) => { out += d.toString(); arm(); });
    s.on('end', done);
    s.on('error', reject);
    s.on('connect', async () => {
      for (const c of chunks) {
        s.write(c);
        if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
      }
      arm();
    });
  });
}

const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
const req = (extra = '', b = body) =>
  `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\n${extra}Content-Length: ${Buffer.byteLength(b)}\r\n\r\n${b}`;

test('three pipelined requests in one write get three answers in order', async () => {
  const out = await raw(mock.port, [req() + req('x-mock-scenario: tokens=1\r\n') + req('x-mock-scenario: status=503\r\n')]);
  const statuses = [...out.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]);
  assert.deepEqual(statuses, ['200', '200', '503']);
  assert.ok(out.indexOf('"content":"Hello from"') < out.indexOf('"content":"Hello",'));
});

test('a request split into small pieces is reassembled', async () => {
  const r = req();
  const pieces = [];
  for (let i = 0; i < r.length; i += 7) pieces.push(r.slice(i, i + 7));
  const out = await raw(mock.port, pieces, { gapMs: 2 });
  assert.match(out, /^HTTP\/1\.1 200 OK/);
  assert.match(out, /"completion_tokens":2/);
});

test('chunked request body and Expect: 100-continue', async () => {
  const half = Math.floor(body.length / 2);
  const chunked = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nTransfer-Encoding: chunked\r\nx-mock-scenario: key=chunked\r\n\r\n` +
    `${half.toString(16)}\r\n${body.slice(0, half)}\r\n${(body.length - half).toString(16)}\r\n${body.slice(half)}\r\n0\r\n\r\n`;
  const out = await raw(mock.port, [chunked]);
  assert.match(out, /^HTTP\/1\.1 200 OK/);
  const rec = await mock.requests('chunked');
  assert.equal(rec.requests[0].body, body);

  const head = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nExpect: 100-continue\r\nContent-Length: ${body.length}\r\n\r\n`;
  const out2 = await raw(mock.port, [head, body], { gapMs: 100 });
  assert.match(out2, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK/);
});

test('HTTP/1.0 and Connection: close end the connection after the answer', async () => {
  const t0 = Date.now();
  const out = await raw(mock.port, [req('Connection: close\r\n')], { idleMs: 4000 });
  assert.match(out, /Connection: close/);
  assert.ok(Date.now() - t0 < 3000, 'closed by the server, not by the idle timer');
  const out10 = await raw(mock.port, [req().replace('HTTP/1.1', 'HTTP/1.0')], { idleMs: 4000 });
  assert.match(out10, /^HTTP\/1\.1 200 OK/);
  assert.ok(Date.now() - t0 < 6000);
});

test('malformed request line, bad Content-Length and huge headers are refused', async () => {
  assert.match(await raw(mock.port, ['GARBAGE\r\n\r\n']), /^HTTP\/1\.1 400 /);
  assert.match(await raw(mock.port, ['POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n']), /^HTTP\/1\.1 400 /);
  const big = `GET /v1/models HTTP/1.1\r\nX-Big: ${'a'.repeat(70000)}\r\n\r\n`;
  assert.match(await raw(mock.port, [big]), /^HTTP\/1\.1 431 /);
});

test('unknown routes are 404 in the provider shape; a bad scenario is a 400 naming the item', async () => {
  const r = await fetch(`${mock.url}/v1/nope`, { headers: { authorization: 'Bearer k' } });
  assert.equal(r.status, 404);
  assert.match((await r.json()).error.message, /no route for GET \/v1\/nope/);
  const a = await fetch(`${mock.url}/v1/messages/nope`, { method: 'POST', headers: { 'x-api-key': 'k' } });
  assert.equal(a.status, 404);
  assert.equal((await a.json()).error.type, 'not_found_error');
  const b = await fetch(`${mock.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: 'Bearer k', 'x-mock-scenario': 'tokens=5;frobnicate' }, body });
  assert.equal(b.status, 400);
  assert.match((await b.json()).error.message, /frobnicate/);
});

test('fail-first counts across --threads loops: exactly K failures for K+3 parallel requests', async () => {
  const send = () => fetch(`${mock.url}/v1/chat/completions`, {
    method: 'POST', headers: { authorization: 'Bearer k', 'x-mock-scenario': 'fail-first=4;status=429;key=par' }, body,
  }).then((r) => r.status);
  const statuses = await Promise.all(Array.from({ length: 7 }, send));
  assert.equal(statuses.filter((s) => s === 429).length, 4);
  assert.equal(statuses.filter((s) => s === 200).length, 3);
  assert.equal((await mock.requests('par')).count, 7);
});

test('the recording ring keeps the newest --record-max requests; count keeps the total', async () => {
  await mock.reset();
  for (let i = 0; i < 5; i++) {
    await fetch(`${mock.url}/v1/embeddings`, { method: 'POST', headers: { authorization: 'Bearer k', 'x-mock-scenario': 'key=ring' }, body: JSON.stringify({ model: 'e', input: `n${i}` }) });
  }
  const rec = await mock.requests('ring');
  assert.equal(rec.count, 5);
  assert.deepEqual(rec.requests.map((r) => JSON.parse(r.body).input), ['n2', 'n3', 'n4']);
  const all = await mock.requests();
  assert.equal(all.count, 5);
});

test('a scripted latency also delays errors', async () => {
  const t0 = Date.now();
  const r = await fetch(`${mock.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: 'Bearer k', 'x-mock-scenario': 'status=500;latency=200' }, body });
  assert.equal(r.status, 500);
  assert.ok(Date.now() - t0 >= 190);
});

test('health endpoint', async () => {
  const r = await fetch(`${mock.url}/_mock/health`);
  assert.deepEqual(await r.json(), { ok: true });
});

test('close scenario and --idle-close: the upstream drops connections a pooling client holds', async () => {
  const out = await raw(mock.port, [req('x-mock-scenario: close\r\n') + req()], { idleMs: 4000 });
  assert.match(out, /Connection: close/);
  assert.equal([...out.matchAll(/HTTP\/1\.1 200/g)].length, 1, 'the second request is never read');

  const idle = await startMock(['--idle-close', '150']);
  try {
    const t0 = Date.now();
    const out2 = await raw(idle.port, [req(), req()], { idleMs: 4000 });
    assert.equal([...out2.matchAll(/HTTP\/1\.1 200/g)].length, 2, 'pipelined requests are answered');
    assert.doesNotMatch(out2, /Connection: close/);
    const dt = Date.now() - t0;
    assert.ok(dt >= 140 && dt < 3000, `closed after ${dt} ms of idleness`);
    // The server itself keeps accepting new connections.
    const r = await fetch(`${idle.url}/_mock/health`);
    assert.equal(r.status, 200);
  } finally { await idle.stop(); }
});

test('command line: --help, bad options and bad scenarios fail with a message', async () => {
  const run = async (args) => {
    const p = start(bin('tools/mockllm/mockllm'), args);
    const r = await Promise.race([p.exited, new Promise((res) => setTimeout(() => res(null), 5000))]);
    if (r === null) { await p.stop('SIGKILL'); throw new Error(`mockllm ${args.join(' ')} did not exit`); }
    return { code: r.code, out: p.output() };
  };
  let r = await run(['--help']);
  assert.equal(r.code, 0);
  assert.match(r.out, /usage: mockllm/);
  r = await run(['--bogus', '1']);
  assert.equal(r.code, 2);
  assert.match(r.out, /bad option or value: --bogus/);
  r = await run(['--port', '70000']);
  assert.equal(r.code, 2);
  r = await run(['--scenario', 'tokens=x']);
  assert.equal(r.code, 2);
  assert.match(r.out, /tokens=x/);
  r = await run(['--host', 'localhost', '--port', '0']);
  assert.equal(r.code, 1);
  assert.match(r.out, /not an IPv4 address/);
});
