// A ledger row holding bytes that are not UTF-8 (an agent that cut an
// upstream's message mid-character, as agents before the fix did) must not
// break the readers: QueryLedger answers, and tollctl ledger query shows
// the row with U+FFFD where the bad bytes were instead of failing with
// "out of memory". On both store backends (the settled log carries the
// bytes through the store).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { bin, until } from './lib/proc.mjs';
import { FakeAgent, seed } from './cp_agent_lib.mjs';
import { startCp, startEtcd, TOKENS } from './cp_admin_lib.mjs';

function tollctl(cp, args) {
  return new Promise((resolve) => {
    execFile(bin('cli/tollctl'), args, {
      env: { PATH: process.env.PATH, TOLLGATE_SERVER: cp.grpcAddr, TOLLGATE_TOKEN: TOKENS.admin },
      timeout: 30000, maxBuffer: 64 << 20,
    }, (err, stdout, stderr) => resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr }));
  });
}

const MARK = 'XXBADUTF8XX';
// same length as MARK: a euro sign cut after 2 of its 3 bytes, a stray 0xFF
const BAD = Buffer.from([0x63, 0x75, 0x74, 0xe2, 0x82, 0x7c, 0xff, 0x7c, 0x6f, 0x6b, 0x21]);

for (const backend of ['lmdb', 'etcd']) {
  describe(`invalid UTF-8 in a ledger row on ${backend}`, () => {
    let cp, etcd, ids, rid;

    before(async () => {
      if (backend === 'etcd') etcd = await startEtcd();
      cp = await startCp({ store: etcd ? `etcd:${etcd.url}` : undefined });
      ids = await seed(cp, { name: 'utf8-co' });
      const agent = new FakeAgent(cp, 'edge-utf8');
      await agent.enroll();
      const rec = { ...agent.record(ids), error_message: MARK, run_id: 'bad-utf8' };
      rid = rec.record_id;
      // protobufjs only writes valid UTF-8: patch the encoded batch, then sign it
      const req = agent.signed([rec]);
      const at = req.batch.indexOf(Buffer.from(MARK));
      assert.ok(at > 0);
      BAD.copy(req.batch, at);
      req.signature = crypto.sign(null, req.batch, agent.priv);
      await agent.report(req);
      const reader = cp.as('reader');
      await until(async () => (await reader.call('QueryLedger', { run_id: 'bad-utf8' })).entries.length === 1,
        { timeoutMs: 15000, what: 'the row to reach the ledger' });
    });

    after(async () => {
      const exit = await cp?.stop('SIGTERM');
      await etcd?.proc.stop('SIGKILL');
      assert.deepEqual(exit, { code: 0, signal: null });
    });

    test('tollctl ledger query shows the row, bad bytes as U+FFFD', async () => {
      const q = await tollctl(cp, ['ledger', 'query', '--run', 'bad-utf8']);
      assert.equal(q.code, 0, q.stderr);
      assert.doesNotMatch(q.stderr, /out of memory/);
      assert.match(q.stdout, /\susage\s/);
      const j = await tollctl(cp, ['ledger', 'query', '--run', 'bad-utf8', '--json']);
      assert.equal(j.code, 0, j.stderr);
      const rows = JSON.parse(j.stdout).entries;
      assert.equal(rows.length, 1);
      assert.equal(rows[0].entry_id, rid);
      assert.equal(rows[0].record.error_message, 'cut\uFFFD\uFFFD|\uFFFD|ok!');
      const rc = await tollctl(cp, ['run', 'receipt', 'bad-utf8', '--json']);
      assert.equal(rc.code, 0, rc.stderr);
      assert.match(rc.stdout, /cut\uFFFD\uFFFD\|\uFFFD\|ok!/);
    });
  });
}
