// An HTTPS channel: mockllm behind a TLS terminator whose certificate a
// test CA signed. The agent started with --upstream-ca trusts it and serves
// a chat completion and a stream through it (the openai SDK, the usage
// record billed), and after an upstream ended its idle connection the next
// one resumes the TLS session; an agent without it refuses the unknown certificate and
// the record says why, and so does one trusting another CA; a certificate
// the trusted CA issued for another host name is refused too (the only
// proof that host names are checked); an unreadable --upstream-ca stops the
// agent at start. tests/run.sh runs this file on libcurl too.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import OpenAI from 'openai';
import { startMock, answerText, DEFAULT_TOKENS } from '../../tools/mockllm/mockllm.mjs';
import { startAgent, keyHash } from '../../agent/testing/agent.mjs';
import { bin, tmpdir } from './lib/proc.mjs';

const KEY = 'sk-tg-upstream-tls';
let dir;
let mock;
let term;
let termWrong;
let termIdle;
const idleResumed = []; // termIdle's connections: was each a resumed TLS session?
let sockets = [];
let trusted;
let untrusted;
let wrongCa;

// A CA, a server certificate for 127.0.0.1 and localhost signed by it, and
// one it signed for another host name.
function makeCerts() {
  const run = (args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  run(['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=tls-test-ca', '-keyout', 'ca.key', '-out', 'ca.pem']);
  run(['req', ...ec, '-subj', '/CN=localhost', '-keyout', 'srv.key', '-out', 'srv.csr']);
  run(['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=another-ca', '-keyout', 'other.key', '-out', 'other.pem']);
  writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  run(['x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
    '-extfile', 'ext.cnf', '-out', 'srv.pem']);
  run(['req', ...ec, '-subj', '/CN=other.example', '-keyout', 'wrong.key', '-out', 'wrong.csr']);
  writeFileSync(path.join(dir, 'wrong.cnf'), 'subjectAltName=DNS:other.example\n');
  run(['x509', '-req', '-in', 'wrong.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
    '-extfile', 'wrong.cnf', '-out', 'wrong.pem']);
}

// A TLS upstream: TLS in with this key and certificate, mockllm's plain
// HTTP out, byte for byte. idleEndMs: it ends a connection idle that long
// (close_notify), as servers end kept connections.
async function terminator(name, { idleEndMs, resumed } = {}) {
  const srv = tls.createServer({ key: readFileSync(path.join(dir, `${name}.key`)),
    cert: readFileSync(path.join(dir, `${name}.pem`)) }, (s) => {
    resumed?.push(s.isSessionReused());
    if (idleEndMs) {
      s.setTimeout(idleEndMs);
      s.on('timeout', () => s.end());
    }
    const u = net.connect(mock.port, '127.0.0.1');
    sockets.push(s, u);
    s.pipe(u).pipe(s);
    s.on('error', () => u.destroy());
    u.on('error', () => s.destroy());
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return srv;
}

function snapshot(tlsPort, wrongPort, idlePort) {
  return {
    revision: '1',
    accounts: [{ id: 'acct', name: 'acct', billing_mode: 'BILLING_MODE_PREPAID', status: 'OBJECT_STATUS_ACTIVE' }],
    balances: [{ account_id: 'acct', bucket: 'credit', currency: 'USD', balance_nano: '100000000000' }],
    keys: [{ id: 'k-tls', account_id: 'acct', secret_sha256: keyHash(KEY), status: 'KEY_STATUS_ACTIVE' }],
    channels: [{ id: 'ch-tls', name: 'ch-tls', provider: 'PROVIDER_TYPE_OPENAI', base_url: `https://127.0.0.1:${tlsPort}/v1`,
      credential: 'sk-upstream-tls', route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE' },
    { id: 'ch-wrongname', name: 'ch-wrongname', provider: 'PROVIDER_TYPE_OPENAI', base_url: `https://localhost:${wrongPort}/v1`,
      credential: 'sk-upstream-tls', route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE' },
    { id: 'ch-idle', name: 'ch-idle', provider: 'PROVIDER_TYPE_OPENAI', base_url: `https://localhost:${idlePort}/v1`,
      credential: 'sk-upstream-tls', route_type: 'ROUTE_TYPE_DIRECT', status: 'OBJECT_STATUS_ACTIVE' }],
    routes: [{ model: 'gpt-4o-mini', tiers: [{ targets: [{ channel_id: 'ch-tls' }] }] },
      { model: 'gpt-4o-idle', tiers: [{ targets: [{ channel_id: 'ch-idle' }] }] },
      { model: 'gpt-4o-wrongname', tiers: [{ targets: [{ channel_id: 'ch-wrongname' }] }] }],
    price_cards: [{ id: 'card', version: '1', effective_at_us: '1', currency: 'USD',
      entries: [{ model: 'gpt-4o-mini', input_per_mtok_nano: '150000000', output_per_mtok_nano: '600000000' },
        { model: 'gpt-4o-idle', input_per_mtok_nano: '150000000', output_per_mtok_nano: '600000000' },
        { model: 'gpt-4o-wrongname', input_per_mtok_nano: '150000000', output_per_mtok_nano: '600000000' }] }],
    policy: {},
  };
}

before(async () => {
  dir = tmpdir('tg-upstream-tls-');
  makeCerts();
  mock = await startMock();
  term = await terminator('srv');
  termWrong = await terminator('wrong');
  termIdle = await terminator('srv', { idleEndMs: 200, resumed: idleResumed });
  const snap = snapshot(term.address().port, termWrong.address().port, termIdle.address().port);
  trusted = await startAgent(snap, { args: ['--upstream-ca', path.join(dir, 'ca.pem')] });
  untrusted = await startAgent(snap);
  wrongCa = await startAgent(snap, { args: ['--upstream-ca', path.join(dir, 'other.pem')] });
});

after(async () => {
  await trusted?.stop();
  await untrusted?.stop();
  await wrongCa?.stop();
  for (const s of sockets) s.destroy();
  await new Promise((resolve) => (term ? term.close(resolve) : resolve()));
  await new Promise((resolve) => (termWrong ? termWrong.close(resolve) : resolve()));
  await new Promise((resolve) => (termIdle ? termIdle.close(resolve) : resolve()));
  await mock?.stop();
});

test('an agent trusting the CA serves a chat completion and a stream over HTTPS', async () => {
  const client = new OpenAI({ apiKey: KEY, baseURL: trusted.base, maxRetries: 0 });
  const { data, response } = await client.chat.completions
    .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello over TLS' }] })
    .withResponse();
  assert.equal(data.choices[0].message.content, answerText(DEFAULT_TOKENS));
  const rec = await trusted.waitRecord(response.headers.get('x-request-id'));
  assert.equal(rec.client_status, 200);
  assert.equal(rec.attempts.length, 1);
  assert.equal(rec.attempts[0].channel_id, 'ch-tls');
  assert.equal(rec.attempts[0].http_status, 200);

  const stream = await client.chat.completions.create({
    model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'stream over TLS' }],
  });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content || '';
  assert.equal(text, answerText(DEFAULT_TOKENS));
});

test('an upstream that ends idle connections: the next connection resumes the TLS session', async () => {
  const client = new OpenAI({ apiKey: KEY, baseURL: trusted.base, maxRetries: 0 });
  for (let i = 0; i < 2; i++) {
    const data = await client.chat.completions.create({ model: 'gpt-4o-idle', messages: [{ role: 'user', content: `idle ${i}` }] });
    assert.equal(data.choices[0].message.content, answerText(DEFAULT_TOKENS));
    if (i === 0) await new Promise((resolve) => setTimeout(resolve, 600)); // the upstream ends the kept connection
  }
  // a session freed without close_notify is not resumable (OpenSSL), so the
  // agent's clean close is what makes the second handshake short
  assert.deepEqual(idleResumed, [false, true]);
});

test('an agent without the CA refuses the unknown certificate', async () => {
  const client = new OpenAI({ apiKey: KEY, baseURL: untrusted.base, maxRetries: 0 });
  const err = await client.chat.completions
    .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }] })
    .then(() => null, (e) => e);
  assert.ok(err instanceof OpenAI.APIError, `expected an API error, got ${err}`);
  assert.equal(err.status, 502);
  const rec = await untrusted.waitRecord(err.headers.get('x-request-id'));
  assert.equal(rec.client_status, err.status);
  assert.equal(rec.attempts[0].channel_id, 'ch-tls');
  assert.match(rec.attempts[0].error_message, /certificate|SSL/i);
});

test('an agent whose --upstream-ca is another CA refuses the certificate: a connect error that says so', async () => {
  const client = new OpenAI({ apiKey: KEY, baseURL: wrongCa.base, maxRetries: 0 });
  const err = await client.chat.completions
    .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }] })
    .then(() => null, (e) => e);
  assert.ok(err instanceof OpenAI.APIError, `expected an API error, got ${err}`);
  assert.equal(err.status, 502);
  const rec = await wrongCa.waitRecord(err.headers.get('x-request-id'));
  assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_CONNECT');
  assert.match(rec.attempts[0].error_message, /certificate/i);
});

test('a certificate the trusted CA issued for another host name is refused: a connect error naming the mismatch', async () => {
  const client = new OpenAI({ apiKey: KEY, baseURL: trusted.base, maxRetries: 0 });
  const err = await client.chat.completions
    .create({ model: 'gpt-4o-wrongname', messages: [{ role: 'user', content: 'hello' }] })
    .then(() => null, (e) => e);
  assert.ok(err instanceof OpenAI.APIError, `expected an API error, got ${err}`);
  assert.equal(err.status, 502);
  const rec = await trusted.waitRecord(err.headers.get('x-request-id'));
  assert.equal(rec.attempts[0].channel_id, 'ch-wrongname');
  assert.equal(rec.attempts[0].error_class, 'ERROR_CLASS_CONNECT');
  // lean: "hostname mismatch: the certificate is not for localhost"; libcurl:
  // "no alternative certificate subject name matches target host name 'localhost'"
  assert.match(rec.attempts[0].error_message, /mismatch|no alternative certificate subject name matches/i);
  assert.match(rec.attempts[0].error_message, /localhost/);
});

test('an unreadable --upstream-ca stops the agent at start', () => {
  const r = spawnSync(bin('agent/tollgate-agent'), ['--port', '0', '--upstream-ca', path.join(dir, 'missing.pem')],
    { encoding: 'utf8', timeout: 10000 });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--upstream-ca .*missing\.pem: cannot read it/);
});
