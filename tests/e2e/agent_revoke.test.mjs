// Revoking an agent (a stolen agent key; docs/SECURITY.md): `tollctl agents
// revoke ID --reason R` (AdminService.RevokeAgent). From then on the agent's
// Sync, Lease and ReportUsage calls are refused with PERMISSION_DENIED naming
// the revocation, its open Sync stream is ended (on etcd: by the other
// replica, which only saw the revocation in the store), what it settled
// before stays settled and attributable, the call is audited, and repeating
// it changes nothing. Another agent keeps settling. On LMDB (one replica)
// and on a real etcd with two replicas. The agent is written with
// @grpc/grpc-js and node:crypto (cp_agent_lib's FakeAgent), independently
// of the C agent.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { bin } from './lib/proc.mjs';
import { startCp, startEtcd, seed, waitLeader, balance, costOf, FakeAgent, ADMIN_TOKEN, ENROLL_TOKEN, call } from './cp_agent_lib.mjs';

function tollctl(cp, args) {
  return new Promise((resolve) => {
    execFile(bin('cli/tollctl'), [...args, '--server', cp.addr],
      { env: { ...process.env, TOLLGATE_TOKEN: ADMIN_TOKEN }, timeout: 30000 },
      (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }));
  });
}

const DENIED = 7; // grpc.status.PERMISSION_DENIED
const READER_TOKEN = 'tg-reader-e2e-token-0123456789';
const PRICING_TOKEN = 'tg-pricing-e2e-token-0123456789';
const extraTokens = `e2e-reader reader ${READER_TOKEN}\ne2e-pricing pricing ${PRICING_TOKEN}\n`;

for (const backend of ['lmdb', 'etcd']) describe(`${backend}: agent revocation`, () => {
  let etcd;
  let cpA; // the agents' replica
  let cpB; // where the operator revokes (the same one on LMDB)
  let ids;

  before(async () => {
    if (backend === 'etcd') {
      etcd = await startEtcd();
      cpA = await startCp({ store: `etcd:${etcd.url}`, nodeId: 'cp-a', extraTokens });
      await waitLeader(cpA);
      cpB = await startCp({ store: `etcd:${etcd.url}`, nodeId: 'cp-b', extraTokens });
    } else {
      cpA = cpB = await startCp({ extraTokens });
      await waitLeader(cpA);
    }
    ids = await seed(cpA);
  });
  after(async () => {
    await cpA?.stop();
    if (cpB !== cpA) await cpB?.stop();
    await etcd?.proc.stop('SIGKILL');
  });

  test(`${backend}: revoked: Sync ended and refused, Lease and ReportUsage refused, settled rows kept, audited`, async () => {
    const stolen = new FakeAgent(cpA, 'edge-stolen');
    const other = new FakeAgent(cpA, 'edge-other');
    await stolen.enroll();
    await other.enroll();
    const start = await balance(cpA, ids.account);

    // before: it settles, and holds a Sync stream open
    const rec = stolen.record(ids);
    const settledReq = stolen.signed([rec]);
    const ack = await stolen.report(settledReq);
    assert.equal(ack.settled, 1);
    const cost = costOf(rec.usage);
    assert.equal(await balance(cpA, ids.account), start - cost);
    const sync = await stolen.sync();
    const deadline = Date.now() + 10000;
    while (!sync.messages.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(sync.messages.length > 0, 'the Sync stream is open');

    // a reader or pricing token may not revoke
    for (const [who, token] of [['e2e-reader', READER_TOKEN], ['e2e-pricing', PRICING_TOKEN]])
      await assert.rejects(cpB.adminCall('RevokeAgent', { agent_id: stolen.id, reason: 'not mine to do' }, token),
        (e) => e.code === DENIED && e.details === `permission denied: token role '${who.slice(4)}' cannot revoke agents`, who);
    assert.equal((await cpA.adminCall('ListAgents', {})).agents.find((x) => x.agent_id === stolen.id).revocation, null);

    // revoke it with tollctl (on the other replica when there are two)
    const r = await tollctl(cpB, ['agents', 'revoke', stolen.id, '--reason', 'key copied from host edge-7']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^agent ${stolen.id} \\(edge-stolen\\) revoked at \\d{4}-\\d\\d-\\d\\dT[\\d:]+Z: ` +
      'its Sync, Lease and ReportUsage calls are refused\\n$'));
    const why = new RegExp(`agent ${stolen.id} was revoked at \\S+Z by e2e: key copied from host edge-7: ` +
      'its Sync, Lease and ReportUsage calls are refused \\(enroll a new agent with a new key');

    // its open stream is ended, naming the revocation
    const ended = await Promise.race([sync.ended, new Promise((res) => setTimeout(() => res('still open'), 10000))]);
    assert.notEqual(ended, 'still open', 'the Sync stream was ended');
    assert.equal(ended?.code, DENIED, String(ended?.message));
    assert.match(ended.details, why);

    // and everything it asks from now on is refused
    const again = await stolen.sync();
    const e2 = await again.ended;
    assert.equal(e2?.code, DENIED);
    assert.match(e2.details, why);
    await assert.rejects(call(cpA.agentSvc, 'Lease', { proof: await stolen.proof(), account_id: ids.account,
      bucket: 'wallet', requested_nano: '1000000' }), (e) => e.code === DENIED && why.test(e.details));
    const late = stolen.record(ids);
    await assert.rejects(stolen.report(stolen.signed([late])), (e) => e.code === DENIED && why.test(e.details));
    if (cpB !== cpA) { // a follower forwards the batch; the leader refuses it
      const viaB = stolen.record(ids);
      await assert.rejects(stolen.report(stolen.signed([viaB]), cpB), (e) => e.code === DENIED && why.test(e.details));
    }
    await assert.rejects(stolen.report(settledReq), (e) => e.code === DENIED); // a resend too
    // its key does not enroll again (on either replica): a new key does
    for (const cp of new Set([cpA, cpB]))
      await assert.rejects(call(cp.agentSvc, 'Enroll', { enrollment_token: ENROLL_TOKEN, name: 'edge-stolen',
        region: 'test', public_key: stolen.pub, version: 'e2e' }), (e) => e.code === DENIED &&
        e.details === `public_key: the key of revoked agent ${stolen.id} cannot enroll again: generate a new key ` +
          "(empty the agent's data dir's agent_id and agent_key.pem) and enroll that");
    const fresh = new FakeAgent(cpA, 'edge-stolen');
    assert.match((await fresh.enroll()).agent_id, /^agt_/);
    assert.equal(await balance(cpA, ids.account), start - cost, 'nothing more charged for it');

    // what it settled stays settled and attributable
    const page = await cpA.adminCall('QueryLedger', { account_id: ids.account, page_size: 1000 });
    const rows = page.entries.filter((e) => e.record?.agent_id === stolen.id);
    assert.equal(rows.length, 1);
    assert.equal(rows[0].record.record_id, rec.record_id);
    assert.equal(BigInt(rows[0].amount_nano), -cost);

    // another agent is not affected
    const o = other.record(ids);
    assert.equal((await other.report(other.signed([o]))).settled, 1);
    assert.equal(await balance(cpA, ids.account), start - cost - costOf(o.usage));

    // listed as revoked, on both replicas; audited once; repeating changes nothing
    for (const cp of new Set([cpA, cpB])) {
      const list = await cp.adminCall('ListAgents', {});
      const a = list.agents.find((x) => x.agent_id === stolen.id);
      assert.equal(a.revocation.reason, 'key copied from host edge-7');
      assert.equal(a.revocation.revoked_by, 'e2e');
      assert.equal(list.agents.find((x) => x.agent_id === other.id).revocation, null);
    }
    const table = await tollctl(cpA, ['agents', 'list']);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout.split('\n')[0], /REVOKED/);
    assert.match(table.stdout.split('\n').find((l) => l.startsWith(stolen.id)), /\d{4}-\d\d-\d\dT[\d:]+Z\s*$/);
    const first = (await cpA.adminCall('ListAgents', {})).agents.find((x) => x.agent_id === stolen.id).revocation;
    const twice = await cpB.adminCall('RevokeAgent', { agent_id: stolen.id, reason: 'another reason' });
    assert.deepEqual(twice.revocation, first, 'a second revocation answers the first');
    const audit = await cpA.adminCall('QueryAudit', { page_size: 1000 });
    const ev = audit.events.filter((e) => e.method === 'RevokeAgent');
    assert.equal(ev.length, 1, 'audited once');
    assert.equal(ev[0].object_type, 'agent');
    assert.equal(ev[0].object_id, stolen.id);
    assert.equal(ev[0].actor.token_name, 'e2e');
    assert.match(ev[0].after_json, /key copied from host edge-7/);

    // an unknown agent: NOT_FOUND, and tollctl says how to find the ids
    const nf = await tollctl(cpB, ['agent', 'revoke', 'agt_nope']);
    assert.notEqual(nf.code, 0);
    assert.match(nf.stderr, /agent 'agt_nope' not found \(tollctl agents list shows them\)/);

    // the replicas exit cleanly (under ASan+UBSan: no leak, no memory error)
    for (const cp of [...new Set([cpB, cpA])]) {
      const out = cp.proc.output();
      assert.equal((await cp.stop()).code, 0, `tollgate-cp exits 0 on SIGTERM:\n${out.slice(-3000)}`);
    }
    cpA = cpB = null;
  });
});
