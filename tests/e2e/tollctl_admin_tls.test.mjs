// tollgate-cp's gRPC port over TLS and mTLS, used by tollctl (--ca, --cert,
// --key, --tls-name) and by @grpc/grpc-js. Certificates are made at test
// time by the openssl CLI. Checks what an operator would: a client trusting
// the server certificate and presenting a client certificate the control
// plane trusts is served; without the client certificate, or over
// plaintext, it is refused with a non-zero exit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { bin, tmpdir, until } from './lib/proc.mjs';
import { startCp, TOKENS, pkg, grpc } from './cp_admin_lib.mjs';

const dir = tmpdir('tg-cp-tls-');
let cp;

function makeCert(name, cn, san) {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
    '-nodes', '-days', '2', '-subj', `/CN=${cn}`, ...(san ? ['-addext', `subjectAltName=${san}`] : []),
    '-keyout', path.join(dir, `${name}.key`), '-out', path.join(dir, `${name}.crt`)], { stdio: 'ignore' });
  return { crt: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
}

const server = makeCert('server', 'localhost', 'DNS:localhost,IP:127.0.0.1');
const operator = makeCert('operator', 'ops-laptop');

function tollctl(args) {
  return new Promise((resolve) => {
    execFile(bin('cli/tollctl'), args, {
      env: { PATH: process.env.PATH, TOLLGATE_SERVER: cp.grpcAddr, TOLLGATE_TOKEN: TOKENS.admin }, timeout: 30000,
    }, (err, stdout, stderr) => resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr }));
  });
}

before(async () => {
  cp = await startCp({ extra: ['--tls-cert', server.crt, '--tls-key', server.key, '--client-ca', operator.crt] });
  // its log line (stderr) and the port line (stdout) come through two pipes
  await until(() => /grpc 127\.0\.0\.1:\d+ \(mTLS\)/.test(cp.proc.output()),
    { timeoutMs: 5000, what: 'the serving line saying mTLS' });
});

after(async () => {
  const exit = await cp?.stop('SIGTERM');
  assert.deepEqual(exit, { code: 0, signal: null }, cp?.proc.output().slice(-4000));
});

test('mTLS: tollctl with the CA and a trusted client certificate is served', async () => {
  const r = await tollctl(['whoami', '--ca', server.crt, '--cert', operator.crt, '--key', operator.key,
    '--tls-name', 'localhost', '--timeout', '10']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), `ops (role admin) at ${cp.grpcAddr}`);
  const acct = await tollctl(['account', 'create', '--name', 'tls-co', '--bucket', 'credit:USD', '--json',
    '--ca', server.crt, '--cert', operator.crt, '--key', operator.key]);
  assert.equal(acct.code, 0, acct.stderr);
  assert.equal(JSON.parse(acct.stdout).name, 'tls-co');
});

test('refused without a client certificate or over plaintext', async () => {
  const noCert = await tollctl(['whoami', '--ca', server.crt, '--timeout', '5']);
  assert.equal(noCert.code, 1);
  const closed = /^tollctl: cannot reach the control plane at [\d.:]+: the connection was closed while it was set up \(TLS mismatch\? check --tls, --ca, --cert and --key\)$/m;
  assert.match(noCert.stderr, closed);
  const plain = await tollctl(['whoami', '--timeout', '5']);
  assert.equal(plain.code, 1);
  assert.match(plain.stderr, closed);
});

test('grpc-js over mTLS reaches AdminService', async () => {
  const creds = grpc.credentials.createSsl(readFileSync(server.crt), readFileSync(operator.key), readFileSync(operator.crt));
  const c = new pkg.AdminService(cp.grpcAddr, creds);
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${TOKENS.reader}`);
  const r = await new Promise((resolve, reject) =>
    c.WhoAmI({}, md, { deadline: Date.now() + 10000 }, (e, x) => (e ? reject(e) : resolve(x))));
  c.close();
  assert.deepEqual(r, { token_name: 'auditor', role: 'reader' });
});
