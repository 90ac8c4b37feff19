// deploy/monitoring/ against a live control plane and agent, read by a real
// Prometheus (Debian's `prometheus` package): `promtool check rules` and
// `promtool check config` accept the shipped files; Prometheus, on loopback
// with a temp storage directory, scrapes tollgate-cp (gRPC over mTLS) and a
// tollgate-agent linked to it over mTLS, loads the alert rules (health ok),
// and its HTTP API gives back the series the alerts and the dashboard use:
// leader, store up, agent link, certificate expiry. The 2-day test
// certificates make TollgateCertificateExpiringSoon pending, as it should.
// Every query of the Grafana dashboard evaluates without error.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { startAgent } from '../../agent/testing/agent.mjs';
import { startCp, ENROLL_TOKEN } from './cp_agent_lib.mjs';
import { ROOT, freePort, start, tmpdir, until } from './lib/proc.mjs';

const MON = path.join(ROOT, 'deploy/monitoring');
const have = existsSync('/usr/bin/prometheus') && existsSync('/usr/bin/promtool');
const dir = tmpdir('tg-mon-');
const procs = [];
let cp, agent, prom, promUrl;

function makeCert(name, cn, san) {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
    '-nodes', '-days', '2', '-subj', `/CN=${cn}`, ...(san ? ['-addext', `subjectAltName=${san}`] : []),
    '-keyout', path.join(dir, `${name}.key`), '-out', path.join(dir, `${name}.crt`)], { stdio: 'ignore' });
  return { crt: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
}

async function query(q) {
  const r = await (await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(q)}`)).json();
  assert.equal(r.status, 'success', `${q}: ${JSON.stringify(r)}`);
  return r.data.result;
}

before(async () => {
  if (!have) return;
  const server = makeCert('server', 'localhost', 'DNS:localhost,IP:127.0.0.1');
  const edge = makeCert('edge', 'edge-agent');
  const port = await freePort();
  cp = await startCp({ dataDir: tmpdir('tg-mon-cp-'), nodeId: 'cp-mon', extraArgs: ['--listen', `127.0.0.1:${port}`,
    '--tls-cert', server.crt, '--tls-key', server.key, '--client-ca', edge.crt] });
  procs.push(cp);
  agent = await startAgent(null, { noSnapshot: true, args: ['--cp', `127.0.0.1:${port}`, '--enroll-token', ENROLL_TOKEN,
    '--cp-ca', server.crt, '--cp-cert', edge.crt, '--cp-key', edge.key] });
  procs.push(agent);
  await until(async () => /tollgate_agent_cp_connected\{[^}]*\} 1/.test(await (await fetch(`${agent.metricsUrl}/metrics`)).text()),
    { timeoutMs: 15000, what: 'the agent to connect over mTLS' });

  const webPort = await freePort();
  promUrl = `http://127.0.0.1:${webPort}`;
  const cfg = path.join(dir, 'prometheus.yml');
  writeFileSync(cfg, `global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ['${path.join(MON, 'tollgate-alerts.yml')}']
scrape_configs:
  - job_name: tollgate-cp
    static_configs: [{targets: ['127.0.0.1:${cp.http}']}]
  - job_name: tollgate-agent
    static_configs: [{targets: ['${agent.metricsUrl.replace('http://', '')}']}]
`);
  prom = start('/usr/bin/prometheus', [`--config.file=${cfg}`, `--storage.tsdb.path=${path.join(dir, 'tsdb')}`,
    `--web.listen-address=127.0.0.1:${webPort}`, '--log.level=warn']);
  procs.push({ stop: () => prom.stop('SIGTERM') });
  await until(async () => { try { return (await fetch(`${promUrl}/-/ready`)).ok; } catch { return false; } },
    { timeoutMs: 30000, what: 'Prometheus to be ready' });
});

after(async () => {
  for (const p of procs.reverse()) await p.stop();
});

test('promtool accepts the alert rules and the example configuration', { skip: !have && 'prometheus is not installed (deploy/install-deps.sh)' }, () => {
  for (const args of [['check', 'rules', path.join(MON, 'tollgate-alerts.yml')], ['check', 'config', path.join(MON, 'prometheus.yml')]]) {
    const r = spawnSync('/usr/bin/promtool', args, { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout + r.stderr, /SUCCESS: 12 rules found/);
  }
});

test('Prometheus scrapes a live control plane and agent, loads the rules, and gives the series back', { skip: !have && 'prometheus is not installed', timeout: 90000 }, async () => {
  await until(async () => (await query('up == 1')).length === 2, { timeoutMs: 30000, what: 'both targets up' });
  const one = async (q) => {
    let r = [];
    await until(async () => (r = await query(q)).length > 0, { timeoutMs: 20000, what: q });
    return r;
  };
  assert.equal((await one('tollgate_cp_is_leader'))[0].value[1], '1');
  assert.equal((await one('tollgate_cp_leader{node="cp-mon"}'))[0].value[1], '1');
  assert.equal((await one('tollgate_cp_store_up'))[0].value[1], '1');
  const link = await one('tollgate_agent_cp_connected');
  assert.equal(link[0].value[1], '1');
  // certificates made for 2 days: between 1 and 2 days left, on both sides
  for (const [q, certs] of [['tollgate_cp_cert_expiry_seconds', ['client_ca', 'server']],
    ['tollgate_agent_cert_expiry_seconds', ['ca', 'client']]]) {
    const r = await one(q);
    assert.deepEqual(r.map((s) => s.metric.cert).sort(), certs);
    for (const s of r) assert.ok(Number(s.value[1]) > 86400 && Number(s.value[1]) <= 2 * 86400, JSON.stringify(s));
  }
  // the rules are loaded and evaluate
  const rules = await (await fetch(`${promUrl}/api/v1/rules`)).json();
  const groups = rules.data.groups.map((g) => g.name).sort();
  assert.deepEqual(groups, ['tollgate-agent', 'tollgate-cp', 'tollgate-tls']);
  await until(async () => {
    const r = await (await fetch(`${promUrl}/api/v1/rules`)).json();
    return r.data.groups.every((g) => g.rules.every((x) => x.health === 'ok'));
  }, { timeoutMs: 20000, what: 'every rule evaluated with health ok' });
  // the 2-day certificates are within the 14-day warning: the alert is pending
  await until(async () => {
    const a = await (await fetch(`${promUrl}/api/v1/alerts`)).json();
    return a.data.alerts.some((x) => x.labels.alertname === 'TollgateCertificateExpiringSoon');
  }, { timeoutMs: 20000, what: 'TollgateCertificateExpiringSoon to be pending' });
  const a = await (await fetch(`${promUrl}/api/v1/alerts`)).json();
  // (pending at most: the first evaluation may precede the first scrape)
  assert.ok(!a.data.alerts.some((x) => x.labels.alertname === 'TollgateLeaderMissing' && x.state === 'firing'),
    JSON.stringify(a.data.alerts));
  // every dashboard query evaluates
  const dash = JSON.parse(readFileSync(path.join(MON, 'grafana-dashboard.json'), 'utf8'));
  for (const p of dash.panels) for (const t of p.targets) await query(t.expr.replaceAll('$__rate_interval', '1m'));
});
