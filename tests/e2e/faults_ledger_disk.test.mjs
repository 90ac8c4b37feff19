// The control plane's ledger disk full (issue 17, item 2). The control
// plane's --data-dir (its LMDB ledger, settled.rev, and on the embedded
// store the store too) sits on a small tmpfs that a filler file then fills
// to the last byte, while a real agent serves traffic through it.
//   - settlement stops with a clear error: the control plane's log names the
//     disk and the fix, the agent's ReportUsage is refused with UNAVAILABLE
//     saying the same, and the agent keeps serving and keeps the records
//     spooled in its outbox;
//   - the ledger stays whole (a `tollgate-cp backup` taken while the disk is
//     full verifies every row's chain hash), no record is in it twice, and no
//     balance moved without its ledger row: with the free-space floor
//     (--ledger-min-free-mb, "floor") nothing settles once the disk is
//     below it; without it ("no floor": the disk fills under an append) the
//     one group committed before the failed append moved the balance with its
//     rows in the store's settled log, and its agent is not acknowledged, so
//     its records stay in the outbox until the rows are in the ledger;
//   - the filler deleted, every record settles exactly once, and the ledger's
//     rows sum to the balance's movement to the nano-unit.
// On LMDB the store shares the full disk with the ledger (the default
// layout); on etcd only the ledger and settled.rev are local (etcd keeps the
// balances and the settled log). Needs `mount -t tmpfs` (root, as CI runs);
// skipped with the reason where the kernel refuses it.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { startMock } from '../../tools/mockllm/mockllm.mjs';
import { startAgent } from '../../agent/testing/agent.mjs';
import { startCp, startEtcd, seed, balance, ENROLL_TOKEN } from './cp_agent_lib.mjs';
import { bin, freePort, tmpdir, until } from './lib/proc.mjs';
import { mountTmpfs, umountTmpfs, fill } from './lib/tmpfs.mjs';

const CASES = [['lmdb', 'floor'], ['lmdb', 'no floor'], ['etcd', 'floor'], ['etcd', 'no floor']];

for (const [backend, variant] of CASES) describe(`${backend}, ${variant}: the control plane's ledger disk full`, () => {
  const floor = variant === 'floor';
  let mock;
  let etcd;
  let cp;
  let agent;
  let mnt;
  let skip = null;

  before(async () => {
    mnt = tmpdir('tg-ledger-disk-');
    skip = mountTmpfs(mnt, '8m');
    if (skip) return;
    mock = await startMock();
    if (backend === 'etcd') etcd = await startEtcd();
  });
  after(async () => {
    try {
      await agent?.stop();
      await cp?.stop();
      await mock?.stop();
      await etcd?.proc.stop('SIGKILL');
    } finally {
      if (!skip) umountTmpfs(mnt); // even when a stop threw; throws itself when it cannot
    }
  });

  test(`${backend}, ${variant}: settlement stops with a clear error, the agent spools, the ledger stays whole; space back: each record settles once`, async (t) => {
    if (skip) { t.skip(skip); return; }
    const cpDir = path.join(mnt, 'cp');
    mkdirSync(cpDir);
    const cpPort = await freePort();
    const store = etcd ? `etcd:${etcd.url}` : undefined;
    cp = await startCp({ store, dataDir: cpDir,
      extraArgs: ['--listen', `127.0.0.1:${cpPort}`, '--ledger-min-free-mb', floor ? '1' : '0'] });
    const ids = await seed(cp, { topup: 100n * 1000000000n });
    const ch = await cp.adminCall('CreateChannel', { channel: {
      name: 'mock', provider: 'PROVIDER_TYPE_OPENAI', base_url: `${mock.url}/v1`, route_type: 'ROUTE_TYPE_POOLED',
      credential: 'sk-upstream-ledger-disk' } });
    await cp.adminCall('PutRoute', { route: { model: 'gpt-4o', tiers: [{ targets: [{ channel_id: ch.id }] }] } });
    const secret = (await cp.adminCall('CreateKey', { key: { account_id: ids.account, name: 'disk' } })).secret;
    agent = await startAgent(null, { noSnapshot: true,
      args: ['--cp', `127.0.0.1:${cpPort}`, '--enroll-token', ENROLL_TOKEN] });
    await until(async () => (await fetch(`${agent.url}/readyz`)).status === 200,
      { timeoutMs: 15000, what: 'the agent to receive its snapshot over Sync' });

    const costs = new Map(); // request id -> its receipt's cost
    const ask = async () => {
      const r = await fetch(`${agent.base}/chat/completions`, { method: 'POST',
        headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json',
          'user-agent': 'u'.repeat(600) }, // bigger rows: the ledger needs new pages sooner
        body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'bill me' }] }) });
      const body = await r.text();
      const id = r.headers.get('x-request-id');
      if (r.status !== 200) assert.ok(JSON.parse(body).error, `${r.status} in the OpenAI error shape: ${body}`);
      else costs.set(id, BigInt((await agent.waitRecord(id)).cost_nano || 0)); // (the log keeps the last 64 KB)
      return { status: r.status, body, id };
    };
    // rows of the account's ledger: Map request id -> [amount]
    const ledger = async () => {
      const page = await cp.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
      assert.equal(page.next_page_token, '', 'one page holds them all');
      const by = new Map();
      for (const e of page.entries) {
        if (!e.record) continue;
        if (!by.has(e.record.request_id)) by.set(e.record.request_id, []);
        by.get(e.record.request_id).push(BigInt(e.amount_nano));
      }
      return by;
    };
    const sum = (xs) => xs.reduce((a, b) => a + b, 0n);

    const served = [];
    for (let i = 0; i < 3; i++) {
      const a = await ask();
      assert.equal(a.status, 200, a.body);
      served.push(a.id);
    }
    await until(() => agent.outbox().length === 0, { timeoutMs: 15000, what: 'the first records to settle' });
    const start = await balance(cp, ids.account);
    const before = new Set((await ledger()).keys());
    const logAt = cp.proc.output().length;
    const cpLog = () => cp.proc.output().slice(logAt);

    const filler = fill(mnt);
    // below the floor the tailer pauses settlement; without it, whichever fills first: the
    // ledger's append or (embedded store) the store's commit; LMDB reports a write cut
    // short by the full disk as EIO, a refused one as ENOSPC
    const paused = floor
      ? /settlement paused: the file system of --data-dir (\S+) \(the ledger's\) has \d+ bytes free, below --ledger-min-free-mb 1; free space there \(df -h (\S+)\)/
      : /settlement paused: (?:this replica's ledger cannot be written \(ledger \S+: append: (?:No space left on device|Input\/output error)\)|the store cannot be written \(lmdb store: commit: (?:disk full \(No space left on device\)|Input\/output error)\)); if its disk is full, free space on the file system of (?:--data-dir )?(\S+) \(df -h (\S+)\)/;
    if (floor) {
      // the floor is checked every second: settle nothing more from then on
      await until(() => paused.test(cpLog()), { timeoutMs: 5000, what: 'the control plane to pause settlement' });
    }
    const during = [];
    for (let i = 0; i < 300 && !(paused.test(cpLog()) && during.length >= 12); i++) {
      const a = await ask();
      if (a.status === 200) during.push(a.id);
    }
    const m = paused.exec(cpLog());
    assert.ok(m, `the control plane logs why settlement stopped and the fix:\n${cp.proc.output().slice(-3000)}\n${agent.proc.output().split('\n').filter((l) => !l.includes('"comp":"usage"')).slice(-20).join('\n')}`);
    assert.ok(m[1] === cpDir || m[1] === path.join(cpDir, 'store'), `the log names the disk: ${m[0]}`);
    assert.equal(m[2], m[1], 'and the command to look at it');
    assert.ok(during.length >= 12, `the agent kept serving: ${during.length} answers`);
    // the agent is told the same, keeps resending, and keeps the records
    await until(() => /ReportUsage batch \d+ \(\d+ records\) failed, will resend: .*settlement paused: /.test(agent.proc.output()),
      { timeoutMs: 10000, what: "the agent's ReportUsage to be refused naming the reason" });
    assert.ok([...costs.values()].every((c) => c > 0n));
    await new Promise((r) => setTimeout(r, 1500)); // a resend or two meanwhile
    const spooled = new Set(agent.outbox().map((h) => h.record.request_id));
    const rowsNow = await ledger();
    const moved = start - await balance(cp, ids.account);
    const inLedger = during.filter((id) => rowsNow.has(id));
    for (const [id, amounts] of rowsNow) assert.equal(amounts.length, 1, `request ${id}: one ledger row`);
    for (const id of during) assert.ok(spooled.has(id) || rowsNow.has(id), `record of ${id} kept: in the outbox or the ledger`);
    const ledgerMoved = -sum(inLedger.map((id) => rowsNow.get(id)[0]));
    assert.equal(ledgerMoved, sum(inLedger.map((id) => costs.get(id))), 'each ledger row is its receipt\'s cost');
    if (floor) {
      assert.equal(inLedger.length, 0, 'nothing settled below the floor');
      assert.equal(moved, 0n, 'no balance moved below the floor');
      assert.equal(spooled.size, during.length, 'every record waits in the outbox');
    } else {
      // the one group committed before its append failed: its balance moved with
      // its rows in the settled log, its agent not acknowledged (records still spooled)
      const unappended = moved - ledgerMoved;
      const perRecord = costs.get(during[0]);
      assert.ok(unappended >= 0n && unappended % perRecord === 0n, `moved ${moved}, ledger ${ledgerMoved}`);
      assert.ok(unappended / perRecord <= BigInt(during.filter((id) => spooled.has(id) && !rowsNow.has(id)).length),
        'what moved without a ledger row yet is records the agent still holds');
    }
    // the ledger is whole while the disk is full: a backup verifies every row's chain hash
    const bk = path.join(tmpdir('tg-ledger-disk-bk-'), 'b');
    const bkArgs = ['backup', '--to', bk, '--data-dir', cpDir, ...(store ? ['--store', store] : [])];
    const out = execFileSync(bin('controlplane/tollgate-cp'), bkArgs, { encoding: 'utf8', stdio: 'pipe' });
    assert.match(out, /verified/i, out);

    // space back: everything settles exactly once
    rmSync(filler);
    const all = [...served, ...during];
    const want = start - sum(during.map((id) => costs.get(id)));
    await until(async () => agent.outbox().length === 0 && (await balance(cp, ids.account)) === want,
      { timeoutMs: 30000, what: 'every spooled record to settle' });
    assert.match(cpLog(), /the (ledger takes rows|store takes writes) again: settlement resumes/);
    await new Promise((r) => setTimeout(r, 1000)); // nothing more arrives later
    assert.equal(await balance(cp, ids.account), want, 'charged exactly once, to the nano-unit');
    const rows = await ledger();
    for (const id of all) {
      assert.equal(rows.get(id)?.length, 1, `request ${id}: exactly one ledger row`);
      assert.equal(-rows.get(id)[0], costs.get(id), `request ${id}: the receipt's cost`);
    }
    const fresh = [...rows.keys()].filter((id) => !before.has(id));
    assert.deepEqual(fresh.sort(), [...during].sort(), 'no other row appeared');
    assert.equal(-sum(fresh.map((id) => rows.get(id)[0])), start - want, 'the new rows sum to the balance movement');

    // both exit cleanly (under ASan+UBSan: no leak, no memory error)
    const cpOut = cp.proc.output();
    const ex = await cp.stop();
    cp = null;
    assert.equal(ex.code, 0, `tollgate-cp exits 0 on SIGTERM:\n${cpOut.slice(-3000)}`);
    assert.equal((await agent.stop()).code, 0, 'tollgate-agent exits 0 on SIGTERM');
    agent = null;
  });
});
