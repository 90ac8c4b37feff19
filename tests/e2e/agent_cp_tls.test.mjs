// The agent's link to the control plane over mTLS: tollgate-cp serves gRPC
// with a server certificate and requires client certificates; a real
// tollgate-agent trusts the server's CA (--cp-ca), presents its own
// certificate (--cp-cert/--cp-key) and takes its enrollment token from a
// file (--enroll-token-file: not visible in ps). It is configured over Sync,
// serves, and its usage settles. An agent without a client certificate
// never gets a configuration. A control plane asked to serve plaintext on a
// non-loopback address with TG_CP_REQUIRE_TLS=1 refuses to start.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent } from '../../agent/testing/agent.mjs';
import protoLoader from '@grpc/proto-loader';
import { startCp, seed, balance, call, grpc, ADMIN_TOKEN, ENROLL_TOKEN } from './cp_agent_lib.mjs';
import { ROOT } from './lib/proc.mjs';
import { bin, freePort, tmpdir, until } from './lib/proc.mjs';

const dir = tmpdir('tg-agent-tls-');
function makeCert(name, cn, san) {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
    '-nodes', '-days', '2', '-subj', `/CN=${cn}`, ...(san ? ['-addext', `subjectAltName=${san}`] : []),
    '-keyout', path.join(dir, `${name}.key`), '-out', path.join(dir, `${name}.crt`)], { stdio: 'ignore' });
  return { crt: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
}
const server = makeCert('server', 'localhost', 'DNS:localhost,IP:127.0.0.1');
const edge = makeCert('edge', 'edge-agent-1');

let mock, cp, cpPort, ids, agent, secret;

before(async () => {
  mock = await startMock();
  cpPort = await freePort();
  cp = await startCp({ dataDir: tmpdir('tg-tls-cp-'), extraArgs: ['--listen', `127.0.0.1:${cpPort}`,
    '--tls-cert', server.crt, '--tls-key', server.key, '--client-ca', edge.crt] });
  // the admin API over the same mTLS (an operator with a trusted client certificate)
  const def = protoLoader.loadSync(['tollgate/v1/admin.proto'], { keepCase: true, longs: String, enums: String,
    defaults: true, oneofs: true, includeDirs: [path.join(ROOT, 'api')] });
  const Admin = grpc.loadPackageDefinition(def).tollgate.v1.AdminService;
  const admin = new Admin(`127.0.0.1:${cpPort}`, grpc.credentials.createSsl(readFileSync(server.crt),
    readFileSync(edge.key), readFileSync(edge.crt)));
  cp.adminCall = (method, req) => {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${ADMIN_TOKEN}`);
    return call(admin, method, req, md);
  };
  ids = await seed(cp, { topup: 100n * 1000000000n });
  const ch = await cp.adminCall('CreateChannel', { channel: { name: 'mock', provider: 'PROVIDER_TYPE_OPENAI',
    base_url: `${mock.url}/v1`, route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-upstream-secret' } });
  await cp.adminCall('PutRoute', { route: { model: 'gpt-4o', tiers: [{ targets: [{ channel_id: ch.id }] }] } });
  secret = (await cp.adminCall('CreateKey', { key: { account_id: ids.account, name: 'tls' } })).secret;
});

after(async () => {
  await agent?.stop();
  await cp?.stop();
  await mock?.stop();
});

test('an agent enrolled over mTLS with its token from a file is configured, serves, and settles', async () => {
  const tokenFile = path.join(dir, 'enroll-token');
  writeFileSync(tokenFile, `${ENROLL_TOKEN}\n`, { mode: 0o600 });
  agent = await startAgent(null, { noSnapshot: true, args: ['--cp', `127.0.0.1:${cpPort}`,
    '--enroll-token-file', tokenFile, '--cp-ca', server.crt, '--cp-cert', edge.crt, '--cp-key', edge.key] });
  // the token is not on the command line (ps shows it otherwise)
  const cmdline = readFileSync(`/proc/${agent.proc.child.pid}/cmdline`, 'utf8');
  assert.ok(!cmdline.includes(ENROLL_TOKEN), 'the enrollment token is not in the process arguments');
  await until(async () => (await fetch(`${agent.url}/readyz`)).status === 200,
    { timeoutMs: 15000, what: 'the agent to receive its configuration over mTLS' });
  const c = new OpenAI({ apiKey: secret, baseURL: agent.base, maxRetries: 0 });
  const { response } = await c.chat.completions.create({ model: 'gpt-4o', max_tokens: 16,
    messages: [{ role: 'user', content: 'over TLS' }] }).withResponse();
  const rec = await agent.waitRecord(response.headers.get('x-request-id'));
  await until(async () => (await balance(cp, ids.account)) === 100n * 1000000000n - BigInt(rec.cost_nano),
    { timeoutMs: 15000, what: 'the record to settle over mTLS' });
});

test('an agent without a client certificate gets nothing', async () => {
  const a = await startAgent(null, { noSnapshot: true, args: ['--cp', `127.0.0.1:${cpPort}`,
    '--enroll-token', ENROLL_TOKEN, '--cp-ca', server.crt] });
  try {
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal((await fetch(`${a.url}/readyz`)).status, 503, 'no configuration without mTLS');
  } finally {
    await a.stop();
  }
});

test('plaintext on a non-loopback address is refused with TG_CP_REQUIRE_TLS=1 (before it binds)', () => {
  const r = spawnSync(bin('controlplane/tollgate-cp'), ['--listen', '0.0.0.0:0', '--data-dir', tmpdir('tg-tls-x-')],
    { env: { ...process.env, TG_CP_REQUIRE_TLS: '1' }, encoding: 'utf8', timeout: 10000 });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /not a loopback address and serves plaintext: give --tls-cert and --tls-key/);
});
