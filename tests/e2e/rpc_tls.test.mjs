// TLS interop: rpc/'s echo_server with a certificate (and, for mTLS, a
// required client CA) called by @grpc/grpc-js over TLS. Certificates are
// made at test time by the openssl CLI in a temp directory. Checks what an
// operator would: a client trusting the server's certificate gets answers;
// with mTLS the handler sees the client certificate's CN; a client without a
// certificate, or with one the server does not trust, is refused.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { ROOT, bin, start, until, tmpdir } from './lib/proc.mjs';

const def = protoLoader.loadSync(path.join(ROOT, 'rpc/testdata/echo.proto'), { longs: Number, defaults: true });
const Echo = grpc.loadPackageDefinition(def).tollgate.test.v1.Echo;
const dir = tmpdir('tg-rpc-tls-');

function makeCert(name, cn, san) {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
    '-nodes', '-days', '2', '-subj', `/CN=${cn}`, ...(san ? ['-addext', `subjectAltName=${san}`] : []),
    '-keyout', path.join(dir, `${name}.key`), '-out', path.join(dir, `${name}.crt`)], { stdio: 'ignore' });
  return { cert: readFileSync(path.join(dir, `${name}.crt`)), key: readFileSync(path.join(dir, `${name}.key`)),
    certPath: path.join(dir, `${name}.crt`), keyPath: path.join(dir, `${name}.key`) };
}

const server = makeCert('server', 'localhost', 'DNS:localhost,IP:127.0.0.1');
const agent = makeCert('agent', 'tollgate-agent-1');
const stranger = makeCert('stranger', 'someone-else');
const procs = [];
const clients = [];

after(async () => {
  for (const c of clients) c.close();
  for (const p of procs) await p.stop('SIGKILL');
});

async function startServer(extra = []) {
  const p = start(bin('rpc/testing/echo_server'), ['--cert', server.certPath, '--key', server.keyPath, ...extra]);
  procs.push(p);
  const port = await until(() => { const m = /^(\d+)\n/.exec(p.output()); return m && Number(m[1]); },
    { timeoutMs: 10000, what: 'echo_server to print its port' });
  return { p, port };
}

function say(port, creds, text) {
  const c = new Echo(`127.0.0.1:${port}`, creds);
  clients.push(c);
  return new Promise((resolve, reject) => c.Say({ text }, { deadline: Date.now() + 5000 },
    (err, reply) => (err ? reject(err) : resolve(reply))));
}

test('TLS: a client trusting the server certificate is served', async () => {
  const { p, port } = await startServer();
  const reply = await say(port, grpc.credentials.createSsl(server.cert), 'secret hello');
  assert.equal(reply.text, 'secret hello');
  assert.equal(reply.identity, '');
  await assert.rejects(say(port, grpc.credentials.createSsl(stranger.cert), 'x'),
    (e) => e.code === grpc.status.UNAVAILABLE);
  await assert.rejects(say(port, grpc.credentials.createInsecure(), 'x'),
    (e) => e.code === grpc.status.UNAVAILABLE);
  assert.deepEqual(await p.stop('SIGTERM'), { code: 0, signal: null });
});

test('mTLS: the client certificate CN reaches the handler; others are refused', async () => {
  const { p, port } = await startServer(['--client-ca', agent.certPath]);
  const reply = await say(port, grpc.credentials.createSsl(server.cert, agent.key, agent.cert), 'mutual');
  assert.equal(reply.identity, 'tollgate-agent-1');
  await assert.rejects(say(port, grpc.credentials.createSsl(server.cert), 'no cert'),
    (e) => e.code === grpc.status.UNAVAILABLE);
  await assert.rejects(say(port, grpc.credentials.createSsl(server.cert, stranger.key, stranger.cert), 'untrusted'),
    (e) => e.code === grpc.status.UNAVAILABLE);
  assert.deepEqual(await p.stop('SIGTERM'), { code: 0, signal: null });
});
