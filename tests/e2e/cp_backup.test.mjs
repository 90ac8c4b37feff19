// Backup and restore as an operator runs them (docs/OPERATIONS.md, "Backup
// and restore"): tollgate-cp serves and settles, `tollgate-cp backup --to`
// copies its data dir while it serves (and while an agent reports), the data
// dir is destroyed, `tollgate-cp restore --from` verifies and puts the copy
// back, and the control plane serves again with the same ledger (rows, chain
// head) and the same balances to the nano-unit. A backup whose ledger was
// changed on disk is refused with a message naming the broken row, and the
// data dir is left as it was.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { bin, tmpdir } from './lib/proc.mjs';
import { FakeAgent, balance, costOf, seed, startCp, waitLeader } from './cp_agent_lib.mjs';

const procs = [];
const UA = 'backup-e2e-user-agent';
after(async () => { for (const p of procs) await p.stop('SIGKILL').catch(() => {}); });

// Runs tollgate-cp with args; resolves { code, stdout, stderr }.
function cpCmd(args) {
  return new Promise((resolve) => {
    execFile(bin('controlplane/tollgate-cp'), args, { timeout: 60000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr }));
  });
}

// Everything an operator compares: the ledger's rows (seq, id, amount, hash)
// through the admin API, its signed head, and the balances.
async function state(cp, account) {
  const rows = [];
  let token = '';
  do {
    const page = await cp.adminCall('QueryLedger', { page_size: 1000, page_token: token });
    for (const e of page.entries) {
      rows.push({ seq: e.seq, id: e.entry_id, amount: e.amount_nano, hash: Buffer.from(e.hash).toString('hex') });
    }
    token = page.next_page_token;
  } while (token);
  const head = await cp.adminCall('GetCheckpoint', {});
  return { rows, head: { seq: head.seq, hash: Buffer.from(head.hash).toString('hex') },
    wallet: await balance(cp, account, 'wallet'), credit: await balance(cp, account, 'credit') };
}

test('backup while serving, destroy, restore: the same ledger and balances, and serving resumes', async () => {
  const dataDir = tmpdir('tg-cp-bk-');
  let cp = await startCp({ dataDir, nodeId: 'cp-bk' });
  procs.push(cp);
  const ids = await seed(cp);
  await waitLeader(cp);
  const agent = new FakeAgent(cp, 'edge-bk');
  await agent.enroll();
  const topup = 100n * 1000000000n;
  let charged = 0n;
  const settleOne = async () => {
    const recs = [agent.record(ids), agent.record(ids, { tokens: { input_tokens: 7777, output_tokens: 333 } })];
    for (const x of recs) x.user_agent = UA; // only in the rows' records: what the corruption below changes
    const r = await agent.report(agent.signed(recs));
    assert.equal(r.settled, 2);
    charged += recs.reduce((s, x) => s + costOf(x.usage), 0n);
  };
  for (let i = 0; i < 10; i++) await settleOne();

  // backup 1: while an agent keeps reporting
  const bk1 = path.join(tmpdir('tg-bk-'), 'b1');
  let load = true;
  const loader = (async () => { while (load) await settleOne(); })();
  const b1 = await cpCmd(['backup', '--to', bk1, '--data-dir', dataDir]);
  load = false;
  await loader;
  assert.equal(b1.code, 0, b1.stderr);
  assert.match(b1.stdout, /chain verified/);
  assert.ok(existsSync(path.join(bk1, 'ledger')) && existsSync(path.join(bk1, 'store', 'data.mdb')));
  assert.equal(statSync(bk1).mode & 0o777, 0o700, 'the backup (signing key, store) is the owner\'s only');

  // backup 2: quiet, so the state at that moment is known exactly
  for (let i = 0; i < 3; i++) await settleOne();
  const want = await state(cp, ids.account);
  assert.equal(want.wallet, topup - charged, 'balance = top-up - what the rows charged');
  const bk2 = path.join(tmpdir('tg-bk-'), 'b2');
  const b2 = await cpCmd(['backup', '--to', bk2, '--data-dir', dataDir]);
  assert.equal(b2.code, 0, b2.stderr);
  assert.match(readFileSync(path.join(bk2, 'MANIFEST'), 'utf8'), new RegExp(`ledger_head_seq ${want.head.seq}\n`));
  // a second backup into a used directory is refused
  const again = await cpCmd(['backup', '--to', bk2, '--data-dir', dataDir]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /not empty/);

  // destroy the data dir
  await cp.stop();
  procs.length = 0;
  rmSync(dataDir, { recursive: true, force: true });

  // restore refuses a backup whose ledger was changed on disk
  const bad = path.join(tmpdir('tg-bk-'), 'bad');
  cpSync(bk2, bad, { recursive: true });
  const file = path.join(bad, 'ledger');
  const bytes = readFileSync(file);
  const needle = Buffer.from(UA);
  const at = bytes.lastIndexOf(needle);
  assert.ok(at > 0, 'a record is in the ledger file');
  bytes[at + needle.length - 1] ^= 0x01; // one bit of one row
  writeFileSync(file, bytes);
  const refused = await cpCmd(['restore', '--from', bad, '--data-dir', dataDir]);
  assert.equal(refused.code, 1, refused.stdout);
  assert.match(refused.stderr, /does not verify .*row \d+.*refusing it/);
  assert.ok(!existsSync(path.join(dataDir, 'ledger')), 'nothing restored from a refused backup');

  // a data dir that already holds a signing key (and nothing else) is
  // refused, and the key is left as it was
  const keyed = tmpdir('tg-cp-keyed-');
  writeFileSync(path.join(keyed, 'cp-signing-key.pem'), 'not this backup\'s key\n');
  const overKey = await cpCmd(['restore', '--from', bk2, '--data-dir', keyed]);
  assert.equal(overKey.code, 1, overKey.stdout);
  assert.match(overKey.stderr, /already holds cp-signing-key\.pem/);
  assert.equal(readFileSync(path.join(keyed, 'cp-signing-key.pem'), 'utf8'), 'not this backup\'s key\n');
  assert.ok(!existsSync(path.join(keyed, 'ledger')) && !existsSync(path.join(keyed, '.restore')));

  // the good backup restores; restoring over a data dir in use is refused
  const ok = await cpCmd(['restore', '--from', bk2, '--data-dir', dataDir]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /chain verified/);
  const twice = await cpCmd(['restore', '--from', bk2, '--data-dir', dataDir]);
  assert.equal(twice.code, 1);
  assert.match(twice.stderr, /already holds settled\.rev|already holds ledger/);

  cp = await startCp({ dataDir, nodeId: 'cp-bk' });
  procs.push(cp);
  await waitLeader(cp);
  agent.cp = cp;
  const got = await state(cp, ids.account);
  assert.deepEqual(got, want, 'the restored ledger and balances are exactly the backed-up ones');

  // serving resumes: a new batch settles, and a batch settled before the
  // backup is still a duplicate (its marker came back with the store)
  const before = got.wallet;
  const rec = agent.record(ids);
  const r = await agent.report(agent.signed([rec]));
  assert.equal(r.settled, 1);
  assert.equal(await balance(cp, ids.account), before - costOf(rec.usage));
  await cp.stop();
  procs.length = 0;

  // backup 1 (taken under load) restores too and is consistent in itself:
  // its balance is the top-up less exactly what its ledger rows charged, and
  // its rows are the original's first rows, hash for hash
  const dir1 = tmpdir('tg-cp-bk1-');
  rmSync(dir1, { recursive: true, force: true });
  const ok1 = await cpCmd(['restore', '--from', bk1, '--data-dir', dir1]);
  assert.equal(ok1.code, 0, ok1.stderr);
  cp = await startCp({ dataDir: dir1, nodeId: 'cp-bk1' });
  procs.push(cp);
  await waitLeader(cp);
  // the tailer may still append batches the store copy holds beyond the
  // ledger copy: wait until the ledger stops moving
  let s1 = await state(cp, ids.account);
  for (let i = 0; i < 20; i++) {
    await new Promise((res) => setTimeout(res, 200));
    const n = await state(cp, ids.account);
    if (n.head.seq === s1.head.seq) break;
    s1 = n;
  }
  const rowsCharged = s1.rows.filter((x) => x.id.startsWith(agent.id)).reduce((s, x) => s - BigInt(x.amount), 0n);
  assert.equal(s1.wallet, topup - rowsCharged, 'balance = top-up - the restored rows, to the nano-unit');
  const bk1Rows = Number(/ledger_rows (\d+)\n/.exec(readFileSync(path.join(bk1, 'MANIFEST'), 'utf8'))[1]);
  assert.ok(s1.rows.length >= bk1Rows && s1.rows.length <= want.rows.length,
    `${s1.rows.length} rows: at least backup 1's ${bk1Rows}, at most the ${want.rows.length} there were later`);
  assert.deepEqual(s1.rows, want.rows.slice(0, s1.rows.length), 'the same rows in the same chain');
  await cp.stop();
  procs.length = 0;
});
