// Installing Tollgate as a service: the systemd units in deploy/systemd pass
// `systemd-analyze verify` (with ExecStart pointed at the built binaries)
// and carry the hardening and limits docs/OPERATIONS.md promises; and
// `--check-config` on both daemons says "config ok" for a good
// configuration and, for a bad one, exits 1 naming the problem and the fix.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, bin, freePort, tmpdir } from './lib/proc.mjs';

const dir = tmpdir('tg-deploy-cfg-');
function makeCert(name, cn) {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
    '-nodes', '-days', '30', '-subj', `/CN=${cn}`, '-addext', 'subjectAltName=IP:127.0.0.1',
    '-keyout', path.join(dir, `${name}.key`), '-out', path.join(dir, `${name}.crt`)], { stdio: 'ignore' });
  return { crt: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
}
const server = makeCert('server', 'localhost');
const other = makeCert('other', 'other');
writeFileSync(path.join(dir, 'admin-tokens'), 'ops admin tg-admin-0123456789abcdef\n');
writeFileSync(path.join(dir, 'enroll-token'), 'tg-enroll-0123456789\n');

function run(prog, args, env = {}) {
  const r = spawnSync(bin(prog), args, { encoding: 'utf8', timeout: 20000,
    env: { PATH: process.env.PATH, ...env } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}
const cp = (args, env) => run('controlplane/tollgate-cp', args, env);
const agent = (args, env) => run('agent/tollgate-agent', args, env);

test('the systemd units verify and carry the hardening and limits', () => {
  const want = ['User=tollgate', 'NoNewPrivileges=yes', 'ProtectSystem=strict', 'ReadWritePaths=/var/lib/',
    'LimitNOFILE=65536', 'Restart=on-failure', 'EnvironmentFile=/etc/tollgate/'];
  const units = {};
  for (const [u, b] of [['tollgate-cp', 'controlplane/tollgate-cp'], ['tollgate-agent', 'agent/tollgate-agent']]) {
    const text = readFileSync(path.join(ROOT, 'deploy/systemd', `${u}.service`), 'utf8');
    for (const w of want) assert.ok(text.includes(w), `${u}.service lacks ${w}`);
    assert.match(text, /^ExecStartPre=\S+ --check-config/m);
    units[u] = text.replaceAll(`/usr/local/bin/${u}`, bin(b));
  }
  // longer than the drain: the cp's 3 s shutdown plus exports, the agent's streams
  assert.match(units['tollgate-cp'], /^TimeoutStopSec=30$/m);
  assert.match(units['tollgate-agent'], /^TimeoutStopSec=120$/m);
  if (!existsSync('/usr/bin/systemd-analyze')) return;
  const d = path.join(dir, 'units');
  mkdirSync(d, { recursive: true });
  const files = Object.entries(units).map(([u, t]) => { const f = path.join(d, `${u}.service`); writeFileSync(f, t); return f; });
  const r = spawnSync('/usr/bin/systemd-analyze', ['verify', ...files], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.equal((r.stdout + r.stderr).trim(), '', 'systemd-analyze verify has nothing to say');
});

test('tollgate-cp --check-config: config ok, then each problem named with its fix', async () => {
  const good = ['--data-dir', path.join(dir, 'cp'), '--admin-tokens', path.join(dir, 'admin-tokens'),
    '--enroll-token-file', path.join(dir, 'enroll-token'), '--tls-cert', server.crt, '--tls-key', server.key,
    '--client-ca', server.crt];
  let r = cp(['--check-config', ...good]);
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, 'config ok\n');
  assert.ok(!existsSync(path.join(dir, 'cp')), 'checking created nothing');
  // the same from the environment (as the systemd unit gives it)
  r = cp(['--check-config'], { TG_CP_DATA_DIR: path.join(dir, 'cp'), TG_CP_ADMIN_TOKENS: path.join(dir, 'admin-tokens'),
    TG_CP_ENROLL_TOKEN_FILE: path.join(dir, 'enroll-token') });
  assert.equal(r.code, 0, r.err);

  r = cp(['--check-config', ...good.slice(0, 6), '--tls-cert', server.crt, '--tls-key', other.key]);
  assert.equal(r.code, 1);
  assert.match(r.err, /^tollgate-cp: config: --tls-cert\/--tls-key: \S+other\.key does not match the certificate \S+server\.crt: give a PEM certificate and the PEM key it was issued for$/m);
  r = cp(['--check-config', '--data-dir', path.join(dir, 'cp'), '--admin-tokens', path.join(dir, 'nope')]);
  assert.equal(r.code, 1);
  assert.match(r.err, /--admin-tokens: .*nope/);
  assert.match(r.err, /^tollgate-cp: config has 1 problem\(s\)$/m);
  const dead = await freePort();
  r = cp(['--check-config', ...good.slice(0, 4), '--store', `etcd:http://127.0.0.1:${dead}`]);
  assert.equal(r.code, 1);
  assert.match(r.err, new RegExp(`--store etcd:http://127\\.0\\.0\\.1:${dead}: .*: start etcd or fix the endpoints`));
  r = cp(['--check-config=offline', ...good.slice(0, 4), '--store', `etcd:http://127.0.0.1:${dead}`]);
  assert.equal(r.code, 0, r.err);
  r = cp(['--check-config', ...good.slice(0, 4), '--listen', '127.0.0.1:99999']);
  assert.equal(r.code, 1);
  assert.match(r.err, /--listen 127\.0\.0\.1:99999: not HOST:PORT with a port from 0 to 65535/);
});

test('tollgate-agent --check-config: config ok, then each problem named with its fix', async () => {
  const data = path.join(dir, 'agent');
  const tls = ['--cp-ca', server.crt, '--cp-cert', other.crt, '--cp-key', other.key];
  let r = agent(['--check-config=offline', '--data-dir', data, '--cp', '127.0.0.1:7443,127.0.0.1:7444', ...tls],
    { TG_AGENT_ENROLL_TOKEN: 'tg-enroll-0123456789' });
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, 'config ok\n');
  r = agent(['--check-config=offline', '--data-dir', data, '--cp', '127.0.0.1:7443', ...tls]);
  assert.equal(r.code, 1);
  assert.match(r.err, /not enrolled yet \(\S+agent_id missing\) and no enrollment token: give --enroll-token-file FILE or TG_AGENT_ENROLL_TOKEN/);
  r = agent(['--check-config=offline', '--data-dir', data, '--cp', '127.0.0.1:7443', '--enroll-token-file',
    path.join(dir, 'enroll-token'), '--cp-cert', other.crt]);
  assert.equal(r.code, 1);
  assert.match(r.err, /--cp-cert and --cp-key go together/);
  const dead = await freePort();
  r = agent(['--check-config', '--data-dir', data, '--cp', `127.0.0.1:${dead}`, '--enroll-token-file',
    path.join(dir, 'enroll-token')]);
  assert.equal(r.code, 1);
  assert.match(r.err, new RegExp(`--cp 127\\.0\\.0\\.1:${dead}: Connection refused: start the control plane or fix the address`));
  r = agent(['--check-config', '--data-dir', path.join(dir, 'no', 'such'), '--snapshot', path.join(dir, 'none.json')]);
  assert.equal(r.code, 1);
  assert.match(r.err, /--snapshot \S+none\.json: cannot read it/);
  assert.match(r.err, /--data-dir \S+: \S+ is not a writable directory/);
});
