// Reading money back through AdminService, on both store backends: a
// top-up and usage settled from a signed batch (the independent fake agent
// of cp_agent_lib.mjs), then QueryLedger (filters, pages, totals),
// ExportLedger (CSV stream), GetRunReceipt (records, attempts, fallbacks,
// totals by route type and bucket), and the same through tollctl.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { bin, until } from './lib/proc.mjs';
import { FakeAgent, seed, costOf } from './cp_agent_lib.mjs';
import { startCp, startEtcd, rejects, TOKENS } from './cp_admin_lib.mjs';

function tollctl(cp, args, env = {}) {
  return new Promise((resolve) => {
    execFile(bin('cli/tollctl'), args, {
      env: { PATH: process.env.PATH, TOLLGATE_SERVER: cp.grpcAddr, TOLLGATE_TOKEN: TOKENS.admin, ...env },
      timeout: 30000, maxBuffer: 64 << 20,
    }, (err, stdout, stderr) => resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr }));
  });
}

// Splits one CSV line (RFC 4180 quoting).
function csvFields(line) {
  const out = [];
  let cur = '';
  let q = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (q) {
      if (ch === '"' && line[i + 1] === '"') { cur += '"'; i++; } else if (ch === '"') q = false; else cur += ch;
    } else if (ch === '"') q = true;
    else if (ch === ',') { out.push(cur); cur = ''; } else cur += ch;
  }
  out.push(cur);
  return out;
}

for (const backend of ['lmdb', 'etcd']) {
  describe(`ledger reads on ${backend}`, () => {
    let cp, etcd, reader, ids, records;

    before(async () => {
      if (backend === 'etcd') etcd = await startEtcd();
      cp = await startCp({ store: etcd ? `etcd:${etcd.url}` : undefined });
      reader = cp.as('reader');
      ids = await seed(cp, { name: 'ledger-co' });
      const agent = new FakeAgent(cp, 'edge-ledger');
      await agent.enroll();
      const mk = (run, tokens, extra = {}) => ({ ...agent.record(ids, { tokens }), run_id: run, ...extra });
      records = [
        mk('job-7', { input_tokens: 1000, output_tokens: 500 }, {
          attempts: [
            { index: 0, channel_id: ids.channel, http_status: 503, error_class: 'ERROR_CLASS_UPSTREAM_5XX', decision: 'ATTEMPT_DECISION_FALLBACK_TIER' },
            { index: 1, channel_id: ids.channel, http_status: 200, error_class: 'ERROR_CLASS_NONE', decision: 'ATTEMPT_DECISION_FINAL' },
          ],
          fallback_used: true,
        }),
        mk('job-7', { input_tokens: 2000, output_tokens: 100 }, {
          attempts: [{ index: 0, channel_id: ids.channel, http_status: 200, decision: 'ATTEMPT_DECISION_FINAL' }],
        }),
        mk('job-7', { input_tokens: 10, output_tokens: 10 }, {
          attempts: [{ index: 0, channel_id: ids.channel, http_status: 200, decision: 'ATTEMPT_DECISION_FINAL' }],
        }),
        mk('', { input_tokens: 300, output_tokens: 0 }, { requested_model: 'gpt-4o', user_agent: 'say "hi", ok' }),
      ];
      const ack = await agent.report(agent.signed(records));
      assert.ok(ack, 'batch acknowledged');
      // the ledger is fed by the settled-log tailer: wait for all 5 rows
      await until(async () => (await reader.call('QueryLedger', { account_id: ids.account })).entries.length === 5,
        { timeoutMs: 15000, what: 'the ledger to hold the top-up and 4 usage rows' });
    });

    after(async () => {
      // a clean exit after all that work: graceful shutdown, nothing leaked
      // (with TG_BIN at the ASan build a leak or memory error makes the exit
      // code non-zero; tests/run.sh runs only the money suites that way)
      const exit = await cp?.stop('SIGTERM');
      await etcd?.proc.stop('SIGKILL');
      assert.deepEqual(exit, { code: 0, signal: null }, cp?.proc.output().slice(-4000));
    });

    test('QueryLedger: filters, totals by currency, pages', async () => {
      const all = await reader.call('QueryLedger', { account_id: ids.account });
      assert.deepEqual(all.entries.map((e) => e.kind).sort(),
        ['LEDGER_KIND_TOPUP', 'LEDGER_KIND_USAGE', 'LEDGER_KIND_USAGE', 'LEDGER_KIND_USAGE', 'LEDGER_KIND_USAGE']);
      const want = records.reduce((s, r) => s + BigInt(r.cost_nano), 0n);
      assert.equal(all.totals.length, 1);
      const t = all.totals[0];
      assert.equal(t.currency, 'USD');
      assert.equal(t.count, '5');
      assert.equal(BigInt(t.cost_nano), want, 'cost total = sum of the usage records');
      assert.equal(t.input_tokens, String(1000 + 2000 + 10 + 300));
      assert.equal(t.output_tokens, String(500 + 100 + 10));
      // each usage row carries its receipt, and charges its cost
      const u = all.entries.find((e) => e.kind === 'LEDGER_KIND_USAGE');
      assert.equal(BigInt(u.amount_nano), -BigInt(u.record.cost_nano));
      assert.equal(u.hash.length, 32);

      const run = await reader.call('QueryLedger', { run_id: 'job-7' });
      assert.equal(run.entries.length, 3);
      const usage = await reader.call('QueryLedger', { account_id: ids.account, kinds: ['LEDGER_KIND_USAGE'] });
      assert.equal(usage.entries.length, 4);
      const topups = await reader.call('QueryLedger', { account_id: ids.account, kinds: ['LEDGER_KIND_TOPUP'] });
      assert.equal(topups.entries.length, 1);
      assert.equal(topups.entries[0].amount_nano, '100000000000');
      const pooled = await reader.call('QueryLedger', { route_type: 'ROUTE_TYPE_POOLED' });
      assert.equal(pooled.entries.length, 4);
      const direct = await reader.call('QueryLedger', { route_type: 'ROUTE_TYPE_DIRECT', account_id: ids.account });
      assert.equal(direct.entries.length, 0);
      const future = await reader.call('QueryLedger', { since_us: String((Date.now() + 3600e3) * 1000) });
      assert.equal(future.entries.length, 0);

      const seen = [];
      let token = '';
      for (let i = 0; i < 20; i++) {
        const p = await reader.call('QueryLedger', { account_id: ids.account, page_size: 2, page_token: token });
        assert.ok(p.entries.length <= 2);
        assert.equal(p.totals.length, token ? 0 : 1, 'totals come with the first page only');
        seen.push(...p.entries.map((e) => e.seq));
        token = p.next_page_token;
        if (!token) break;
      }
      assert.deepEqual([...seen].sort(), all.entries.map((e) => e.seq).sort());
      await rejects(assert, reader.call('QueryLedger', { kinds: ['LEDGER_KIND_UNSPECIFIED'] }), 'INVALID_ARGUMENT', /^kinds\[0\]/);
    });

    test('ExportLedger streams a CSV header then one line per row', async () => {
      const chunks = await reader.stream('ExportLedger', { account_id: ids.account });
      const text = chunks.map((c) => c.lines).join('');
      const lines = text.trimEnd().split('\n');
      assert.equal(lines[0], 'seq,settled_at,kind,entry_id,account,project,key,run,model,upstream_model,channel,' +
        'route_type,bucket,currency,amount_nano,cost_nano,upstream_cost_nano,input_tokens,output_tokens,price_version');
      assert.equal(lines.length, 6);
      for (const l of lines.slice(1)) {
        const f = csvFields(l);
        assert.equal(f.length, 20, l);
        assert.match(f[1], /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
      }
      const usageRows = lines.slice(1).map(csvFields).filter((f) => f[2] === 'usage');
      assert.equal(usageRows.length, 4);
      const sum = usageRows.reduce((s, f) => s + BigInt(f[15]), 0n);
      assert.equal(sum, records.reduce((s, r) => s + BigInt(r.cost_nano), 0n));
      for (const f of usageRows) {
        assert.equal(f[11], 'pooled');
        assert.equal(f[12], 'wallet');
        assert.equal(BigInt(f[14]), -BigInt(f[15]), 'amount is the negative cost');
      }
    });

    test('GetRunReceipt: every request and attempt, totals by route type and bucket', async () => {
      const r = await reader.call('GetRunReceipt', { run_id: 'job-7' });
      assert.equal(r.run_id, 'job-7');
      assert.equal(r.records.length, 3);
      assert.equal(r.attempts, 4);
      assert.equal(r.fallbacks, 1);
      const cost = records.slice(0, 3).reduce((s, x) => s + BigInt(x.cost_nano), 0n);
      assert.equal(BigInt(r.total.cost_nano), cost);
      assert.equal(r.total.count, '3');
      assert.equal(r.by_route.length, 1);
      assert.equal(r.by_route[0].route_type, 'ROUTE_TYPE_POOLED');
      assert.equal(r.by_route[0].bucket, 'wallet');
      assert.equal(BigInt(r.by_route[0].totals.cost_nano), cost);
      const withFallback = r.records.find((x) => x.fallback_used);
      assert.deepEqual(withFallback.attempts.map((a) => a.http_status), [503, 200]);
      // the control plane's own price for the first request (it recomputes
      // every cost from the tokens and the price card), not the fake agent's claim
      const first = r.records.find((x) => x.request_id === records[0].request_id);
      assert.ok(first, 'the receipt lists the first request');
      assert.equal(BigInt(first.cost_nano), costOf({ input_tokens: 1000, output_tokens: 500 }));
      await rejects(assert, reader.call('GetRunReceipt', { run_id: 'no-such-run' }), 'NOT_FOUND', /no settled requests/);
    });

    test('ListAgents shows the enrolled agent; GetCheckpoint signs the ledger head', async () => {
      const ag = await reader.call('ListAgents', {});
      const me = ag.agents.find((x) => x.name === 'edge-ledger');
      assert.ok(me, JSON.stringify(ag));
      assert.equal(me.public_key.length, 32);
      const cpk = await reader.call('GetCheckpoint', {});
      const all = await reader.call('QueryLedger', { page_size: 1000 });
      const head = all.entries.reduce((m, e) => (BigInt(e.seq) > BigInt(m.seq) ? e : m));
      assert.equal(cpk.seq, head.seq);
      assert.deepEqual(Buffer.from(cpk.hash), Buffer.from(head.hash));
      // verify offline, as a customer would: Ed25519 over "tollgate-checkpoint-v1" || seq (BE) || hash
      const seq = Buffer.alloc(8);
      seq.writeBigUInt64BE(BigInt(cpk.seq));
      const msg = Buffer.concat([Buffer.from('tollgate-checkpoint-v1'), seq, Buffer.from(cpk.hash)]);
      const spki = Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), Buffer.from(cpk.public_key)]);
      const key = crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' });
      assert.ok(crypto.verify(null, msg, key, Buffer.from(cpk.signature)), 'checkpoint signature verifies');
    });

    if (backend === 'lmdb') {
      test('tollctl: ledger export > usage.csv, run receipt, balance', async () => {
        const csv = path.join(cp.dataDir, 'usage.csv');
        const ex = await tollctl(cp, ['ledger', 'export', '--account', ids.account, '--since', '1h']);
        assert.equal(ex.code, 0, ex.stderr);
        writeFileSync(csv, ex.stdout);
        const lines = ex.stdout.trimEnd().split('\n');
        assert.equal(lines.length, 6);
        assert.match(lines[0], /^seq,settled_at,kind,/);
        const none = await tollctl(cp, ['ledger', 'export', '--since', '2099-01-01']);
        assert.equal(none.stdout.trimEnd().split('\n').length, 1, 'header only');
        const bad = await tollctl(cp, ['ledger', 'export', '--since', 'yesterday-ish']);
        assert.equal(bad.code, 2);
        assert.match(bad.stderr, /--since yesterday-ish: expected RFC 3339/);

        const rc = await tollctl(cp, ['run', 'receipt', 'job-7']);
        assert.equal(rc.code, 0, rc.stderr);
        assert.match(rc.stdout, /^run job-7: 3 requests, 4 attempts, 1 fallbacks, cost [\d.]+ USD$/m);
        assert.match(rc.stdout, /^pooled\s+wallet\s+3\s/m);

        const bal = await tollctl(cp, ['balance', ids.account, '--json']);
        const wallet = JSON.parse(bal.stdout).balances.find((b) => b.bucket === 'wallet');
        const spent = records.reduce((s, r) => s + BigInt(r.cost_nano), 0n);
        assert.equal(BigInt(wallet.balance_nano), 100000000000n - spent);

        const ag = await tollctl(cp, ['agents', 'list']);
        assert.match(ag.stdout, /^ID\s+NAME\s+REGION/m);
        assert.match(ag.stdout, /\sedge-ledger\s+test\s+e2e\s/);

        const q = await tollctl(cp, ['ledger', 'query', '--run', 'job-7']);
        assert.equal(q.code, 0, q.stderr);
        assert.equal(q.stdout.split('\n').filter((l) => /^\d+\s+\S+\s+usage\s/.test(l)).length, 3);
      });
    }
  });
}
