// tollctl's admin commands against a real tollgate-cp, as an operator uses
// them: token from TOLLGATE_TOKEN or --token-file, tables for people, --json
// for scripts, --file for objects, and the errors a person must understand
// (permission denied, unreachable control plane, no token, bad input).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { bin, freePort } from './lib/proc.mjs';
import { startCp, TOKENS } from './cp_admin_lib.mjs';

let cp;

function tollctl(args, { env = {}, token = TOKENS.admin } = {}) {
  return new Promise((resolve) => {
    const e = { PATH: process.env.PATH, TOLLGATE_SERVER: cp.grpcAddr, ...env };
    if (token) e.TOLLGATE_TOKEN = token;
    execFile(bin('cli/tollctl'), args, { env: e, timeout: 30000 },
      (err, stdout, stderr) => resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr }));
  });
}

async function ok(args, opts) {
  const r = await tollctl(args, opts);
  assert.equal(r.code, 0, `tollctl ${args.join(' ')} failed: ${r.stderr}`);
  return r;
}

const json = async (args, opts) => JSON.parse((await ok([...args, '--json'], opts)).stdout);

before(async () => { cp = await startCp(); });
after(async () => {
  const exit = await cp?.stop('SIGTERM');
  assert.deepEqual(exit, { code: 0, signal: null }, cp?.proc.output().slice(-4000));
});

test('whoami with TOLLGATE_TOKEN and with --token-file', async () => {
  const r = await ok(['whoami']);
  assert.equal(r.stdout.trim(), `ops (role admin) at ${cp.grpcAddr}`);
  const f = path.join(cp.dataDir, 'reader.token');
  writeFileSync(f, `${TOKENS.reader}\n`);
  assert.deepEqual(await json(['whoami', '--token-file', f], { token: null }), { token_name: 'auditor', role: 'reader' });
});

test('clear errors: permission denied, unreachable, no token, bad flags', async () => {
  const acct = await json(['account', 'create', '--name', 'err-co', '--bucket', 'credit:USD']);
  const denied = await tollctl(['key', 'create', '--account', acct.id], { token: TOKENS.reader });
  assert.equal(denied.code, 1);
  assert.equal(denied.stderr, "tollctl: permission denied: token role 'reader' cannot create keys\n");

  const port = await freePort();
  const down = await tollctl(['account', 'list'], { env: { TOLLGATE_SERVER: `127.0.0.1:${port}` } });
  assert.equal(down.code, 1);
  assert.equal(down.stderr,
    `tollctl: cannot reach the control plane at 127.0.0.1:${port}: connection refused (is tollgate-cp running?)\n`);

  const none = await tollctl(['account', 'list'], { token: null });
  assert.equal(none.code, 2);
  assert.match(none.stderr, /no admin token: set TOLLGATE_TOKEN or pass --token-file FILE/);

  const wrong = await tollctl(['whoami'], { token: 'tg-wrong-token-0000000000' });
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /^tollctl: missing or unknown admin token/);

  const flag = await tollctl(['account', 'list', '--colour']);
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /unknown flag --colour/);

  const inv = await tollctl(['account', 'create', '--name', 'bad-cur', '--bucket', 'wallet:US$']);
  assert.equal(inv.code, 1);
  assert.equal(inv.stderr, 'tollctl: account.buckets[0].currency: must be a 3-letter code or a unit name\n');

  // a typo in a --file is caught before anything is sent, naming the path
  const f = path.join(cp.dataDir, 'typo.json');
  writeFileSync(f, JSON.stringify({ name: 'x', buckets: [{ name: 'credit', curency: 'USD' }] }));
  const typo = await tollctl(['account', 'create', '--file', f]);
  assert.equal(typo.code, 2);
  assert.match(typo.stderr, /buckets\[0\]/);
  assert.match(typo.stderr, /curency/);
});

test('accounts, projects and keys: tables, --json, secret printed once', async () => {
  const a = await ok(['account', 'create', '--name', 'table-co', '--bucket', 'credit:USD', '--bucket', 'wallet:EUR:25', '--postpaid']);
  assert.match(a.stdout, /^billing_mode\s+postpaid$/m);
  const id = /^id\s+(acc_\S+)$/m.exec(a.stdout)[1];
  const list = await ok(['account', 'list']);
  assert.match(list.stdout, /^ID\s+NAME\s+BILLING\s+STATUS\s+BUCKETS\s+REVISION$/m);
  assert.match(list.stdout, new RegExp(`^${id}\\s+table-co\\s+postpaid\\s+active\\s+credit:USD,wallet:EUR\\s+\\d+$`, 'm'));
  const got = await json(['account', 'get', id]);
  assert.equal(got.buckets[1].credit_limit_nano, '25000000000');

  const upd = await json(['account', 'update', id, '--name', 'table-co-2', '--expected-revision', got.revision]);
  assert.equal(upd.name, 'table-co-2');
  assert.equal(upd.buckets.length, 2, 'only the named field changed');
  const stale = await tollctl(['account', 'update', id, '--name', 'x', '--expected-revision', got.revision]);
  assert.equal(stale.code, 1);
  assert.match(stale.stderr, /is at revision \d+, not the expected/);

  const prj = await json(['project', 'create', '--account', id, '--name', 'web']);
  const k = await ok(['key', 'create', '--account', id, '--project', prj.id, '--name', 'ci', '--model-allow', 'gpt-4o*']);
  const secret = /^secret \(shown only now, store it safely\):\n(tg-[0-9A-Za-z]{43})$/m.exec(k.stdout)[1];
  const keyId = /^created key (key_\S+) \((tg-[0-9A-Za-z]{9})\)/m.exec(k.stdout);
  assert.ok(secret.startsWith(keyId[2]));
  const keys = await ok(['key', 'list', '--account', id]);
  assert.match(keys.stdout, new RegExp(`^${keyId[1]}\\s+${keyId[2]}\\s+${id}\\s+${prj.id}\\s+ci\\s+active`, 'm'));
  assert.ok(!keys.stdout.includes(secret));
  assert.ok(!(await ok(['key', 'get', keyId[1], '--json'])).stdout.includes(secret.slice(12)));

  // rate limits: set on create; an update replaces both, so one flag alone is refused
  const rk = await json(['key', 'create', '--account', id, '--name', 'rated', '--rpm', '60', '--tpm', '1000']);
  assert.deepEqual(rk.key.rate_limit, { requests_per_minute: '60', tokens_per_minute: '1000' });
  const half = await tollctl(['key', 'update', rk.key.id, '--rpm', '30']);
  assert.equal(half.code, 2);
  assert.match(half.stderr, /--rpm without --tpm would set the other limit to 0 \(unlimited\).*give both \(--rpm N --tpm N/);
  assert.deepEqual((await json(['key', 'get', rk.key.id])).rate_limit, { requests_per_minute: '60', tokens_per_minute: '1000' });
  const both = await json(['key', 'update', rk.key.id, '--rpm', '30', '--tpm', '0']);
  assert.equal(both.rate_limit.requests_per_minute, '30');
  assert.ok(!Number(both.rate_limit.tokens_per_minute ?? 0), 'tokens per minute: unlimited');
  // a project's: the same flags, the same rule
  const rp = await json(['project', 'create', '--account', id, '--name', 'rated-prj', '--rpm', '120', '--tpm', '5000']);
  assert.deepEqual(rp.rate_limit, { requests_per_minute: '120', tokens_per_minute: '5000' });
  const phalf = await tollctl(['project', 'update', rp.id, '--tpm', '10']);
  assert.equal(phalf.code, 2);
  assert.match(phalf.stderr, /tollctl project update: --tpm without --rpm would set the other limit to 0/);
  assert.deepEqual((await json(['project', 'get', rp.id])).rate_limit, { requests_per_minute: '120', tokens_per_minute: '5000' });
  assert.equal((await json(['project', 'update', rp.id, '--rpm', '60', '--tpm', '0'])).rate_limit.requests_per_minute, '60');

  assert.equal((await json(['key', 'pause', keyId[1], '--reason', 'budget'])).status, 'KEY_STATUS_PAUSED');
  assert.match((await ok(['key', 'list', '--project', prj.id])).stdout, /paused\s+budget/);
  assert.equal((await json(['key', 'resume', keyId[1]])).status, 'KEY_STATUS_ACTIVE');
  assert.equal((await json(['key', 'revoke', keyId[1]])).status, 'KEY_STATUS_REVOKED');
  const again = await tollctl(['key', 'resume', keyId[1]]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /revocation is permanent/);
  assert.match((await ok(['key', 'delete', keyId[1]])).stdout, new RegExp(`^deleted key ${keyId[1]} \\(revision \\d+\\)$`, 'm'));
});

test('channels, routes and price cards from files', async () => {
  const cred = path.join(cp.dataDir, 'upstream.key');
  writeFileSync(cred, 'sk-from-a-file-0123\n');
  const ch = await json(['channel', 'create', '--name', 'ds', '--provider', 'openai_compatible', '--brand', 'deepseek',
    '--base-url', 'https://api.deepseek.com/v1', '--route-type', 'pooled', '--credential-file', cred]);
  assert.equal(ch.has_credential, true);
  assert.equal(ch.credential, '', 'never returned');
  const table = await ok(['channel', 'list']);
  assert.match(table.stdout, new RegExp(`^${ch.id}\\s+ds\\s+openai_compatible\\s+pooled\\s+https://api.deepseek.com/v1\\s+yes\\s+active$`, 'm'));
  assert.ok(!table.stdout.includes('sk-from-a-file'));

  const ds = await json(['channel', 'create', '--name', 'ds-own', '--provider', 'deepseek',
    '--base-url', 'https://api.deepseek.com/v1', '--route-type', 'pooled']);
  assert.equal(ds.provider, 'PROVIDER_TYPE_DEEPSEEK');
  assert.match((await ok(['channel', 'list'])).stdout, new RegExp(`^${ds.id}\\s+ds-own\\s+deepseek\\s+pooled`, 'm'));
  const nov = await tollctl(['channel', 'create', '--name', 'x', '--provider', 'mistral', '--base-url', 'https://x/v1']);
  assert.equal(nov.code, 2, nov.stderr);
  assert.match(nov.stderr, /provider.*unknown value 'mistral'; use one of:.*PROVIDER_TYPE_DEEPSEEK/s);

  const bad = await tollctl(['route', 'put', 'deepseek-chat', '--channel', 'ch_nope']);
  assert.equal(bad.code, 1);
  assert.equal(bad.stderr, "tollctl: route.tiers[0].targets[0].channel_id: no channel 'ch_nope'\n");
  const r = await json(['route', 'put', 'deepseek-chat', '--channel', `${ch.id}=deepseek-v3`, '--alias', 'ds-chat'],
    { token: TOKENS.pricing });
  assert.equal(r.tiers[0].targets[0].upstream_model, 'deepseek-v3');
  assert.match((await ok(['route', 'list'])).stdout, new RegExp(`^deepseek-chat\\s+\\["ds-chat"\\]\\s+${ch.id}->deepseek-v3`, 'm'));

  const card = path.join(cp.dataDir, 'card.json');
  for (const p of ['270000000', '280000000']) {
    writeFileSync(card, JSON.stringify({ id: 'deepseek', currency: 'USD', note: `input ${p}`,
      entries: [{ model: 'deepseek-chat', route_type: 'pooled', input_per_mtok_nano: p, output_per_mtok_nano: '1100000000' }] }));
    const pub = await ok(['price', 'publish', '--file', card], { token: TOKENS.pricing });
    assert.match(pub.stdout, /^published price card deepseek version [12]$/m);
  }
  const vers = await ok(['price', 'list', 'deepseek']);
  assert.match(vers.stdout, /^deepseek\s+1\s+USD\s+\S+\s+1\s+pricebot\s+input 270000000$/m);
  assert.match(vers.stdout, /^deepseek\s+2\s+USD\s+\S+\s+1\s+pricebot\s+input 280000000$/m);
  assert.equal((await json(['price', 'get', 'deepseek', '--version', '1'])).entries[0].input_per_mtok_nano, '270000000');
  const stale = await tollctl(['price', 'publish', '--file', card, '--expected-version', '1'], { token: TOKENS.pricing });
  assert.equal(stale.code, 1);
  assert.match(stale.stderr, /at version 2, not the expected 1/);
});

test('top-up is idempotent; balance and audit show it', async () => {
  const a = await json(['account', 'create', '--name', 'money-co', '--bucket', 'wallet:USD']);
  const t1 = await ok(['topup', '--account', a.id, '--bucket', 'wallet', '--amount', '12.50', '--currency', 'USD',
    '--idempotency-key', 'inv-1', '--reason', 'invoice 1']);
  assert.match(t1.stdout, new RegExp(`^${a.id}/wallet balance 12.50 USD \\(ledger entry \\S+\\)$`, 'm'));
  const t2 = await ok(['topup', '--account', a.id, '--bucket', 'wallet', '--amount', '12.50', '--currency', 'USD',
    '--idempotency-key', 'inv-1', '--reason', 'invoice 1']);
  assert.match(t2.stdout, /^duplicate, nothing changed: .* balance 12.50 USD/m);
  // the key reused for another amount: refused, naming both
  const t3 = await tollctl(['topup', '--account', a.id, '--bucket', 'wallet', '--amount', '13', '--currency', 'USD',
    '--idempotency-key', 'inv-1', '--reason', 'invoice 1']);
  assert.equal(t3.code, 1);
  assert.match(t3.stderr, /idempotency_key 'inv-1' was used by another change .*: amount_nano 12500000000 there, 13000000000 here/);
  // amounts up to the int64 nano-unit range parse; past it, a clear message
  const big = await json(['account', 'create', '--name', 'big-co', '--bucket', 'wallet:USD']);
  const b1 = await ok(['topup', '--account', big.id, '--bucket', 'wallet', '--amount', '9223372036', '--currency', 'USD',
    '--idempotency-key', 'big-1']);
  assert.match(b1.stdout, /balance 9223372036.00 USD/);
  const b2 = await tollctl(['topup', '--account', big.id, '--bucket', 'wallet', '--amount', '9223372036.854775808',
    '--currency', 'USD', '--idempotency-key', 'big-2']);
  assert.equal(b2.code, 2);
  assert.equal(b2.stderr, "tollctl topup: --amount: '9223372036.854775808' is too large: an amount is at most " +
    '9223372036.854775807 (int64 nano-units)\n');
  const b3 = await tollctl(['topup', '--account', big.id, '--bucket', 'wallet', '--amount', '12,50',
    '--currency', 'USD', '--idempotency-key', 'big-3']);
  assert.equal(b3.code, 2);
  assert.match(b3.stderr, /'12,50' is not a decimal amount with at most 9 decimals/);
  const adj = await ok(['adjust', '--account', a.id, '--bucket', 'wallet', '--amount', '-0.000000001', '--currency', 'USD',
    '--idempotency-key', 'adj-1', '--reason', 'rounding']);
  assert.match(adj.stdout, /balance 12.499999999 USD/);
  const bal = await ok(['balance', a.id]);
  assert.match(bal.stdout, /^wallet\s+USD\s+12.499999999\s+0.00\s+\d+$/m);

  const audit = await json(['audit', '--id', a.id]);
  assert.deepEqual(audit.events.map((e) => e.method), ['CreateAccount']);
  const money = await json(['audit', '--type', 'balance', '--id', `${a.id}/wallet`]);
  assert.deepEqual(money.events.map((e) => e.method), ['TopUp', 'Adjust'], 'the duplicate is not audited');
  const table = await ok(['audit', '--token', 'pricebot']);
  assert.match(table.stdout, /^SEQ\s+AT\s+TOKEN\s+ROLE\s+METHOD/m);
  assert.ok(table.stdout.split('\n').slice(1).filter(Boolean).every((l) => /\spricebot\s+pricing\s/.test(l)));
});
