// Replica catch-up without hands (docs/OPERATIONS.md, "Replica catch-up"):
// two replicas on one etcd with a 1 s settled-log retention; one is stopped,
// the other settles past the retention (and etcd's history is compacted, as
// --auto-compaction does), the stopped one is started and copies the missing
// ledger rows from its peer over gRPC by itself, verified against its own
// chain: both then hold the same rows with the same hashes (the same chain
// head and row count) and tailing goes on. A peer that serves an altered
// copy is refused until a good peer serves it (meanwhile the replica's
// ledger queries answer UNAVAILABLE and it does not run for leader, even
// alone; that nothing of a refused page is
// stored is store/ledger's test_append_copy); a caller without the
// cluster's peer secret gets nothing.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { ROOT, tmpdir, until } from './lib/proc.mjs';
import { FakeAgent, seed, startCp, startEtcd, waitLeader } from './cp_agent_lib.mjs';

const procs = [];
after(async () => { for (const p of procs.reverse()) await p.stop('SIGKILL').catch(() => {}); });

const b64 = (s) => Buffer.from(s).toString('base64');
async function etcdPost(url, api, body) {
  const r = await fetch(`${url}${api}`, { method: 'POST', body: JSON.stringify(body) });
  return r.json();
}
async function countPrefix(url, prefix) {
  const end = Buffer.from(prefix);
  end[end.length - 1] += 1;
  const j = await etcdPost(url, '/v3/kv/range', { key: b64(prefix), range_end: end.toString('base64'), count_only: true });
  return Number(j.count || 0);
}
// What --auto-compaction does: forget the history up to now.
async function compact(url) {
  const j = await etcdPost(url, '/v3/kv/range', { key: b64('tg/') });
  await etcdPost(url, '/v3/kv/compaction', { revision: j.header.revision, physical: true });
}

// A replica's whole ledger: every row's seq, id and chain hash.
async function chain(cp) {
  const rows = [];
  let token = '';
  do {
    const p = await cp.adminCall('QueryLedger', { page_size: 1000, page_token: token });
    for (const e of p.entries) rows.push(`${e.seq} ${e.entry_id} ${Buffer.from(e.hash).toString('hex')}`);
    token = p.next_page_token;
  } while (token);
  return rows;
}

test('a replica behind the settled-log retention copies its peer\'s ledger, verified, and tails on', async () => {
  const etcd = await startEtcd();
  procs.push(etcd.proc);
  const store = `etcd:${etcd.url}`;
  const opts = { store, env: { TG_CP_RETAIN_EVERY_MS: '300' }, extraArgs: ['--settled-retention-s', '1'] };
  const dirA = tmpdir('tg-cp-a-');
  const dirB = tmpdir('tg-cp-b-');
  let cpA = await startCp({ ...opts, nodeId: 'cp-a', dataDir: dirA });
  procs.push(cpA);
  await waitLeader(cpA);
  let cpB = await startCp({ ...opts, nodeId: 'cp-b', dataDir: dirB });
  procs.push(cpB);
  const ids = await seed(cpA);
  const agent = new FakeAgent(cpA, 'edge-cu');
  await agent.enroll();
  const settle = async (batches) => {
    for (let i = 0; i < batches; i++) {
      const r = await agent.report(agent.signed([agent.record(ids), agent.record(ids), agent.record(ids)]));
      assert.equal(r.settled, 3);
    }
  };
  await settle(3);
  let want = await chain(cpA);
  await until(async () => (await chain(cpB)).join() === want.join(), { timeoutMs: 10000, what: 'cp-b to tail' });

  // only replicas of the cluster may copy the ledger
  const def = protoLoader.loadSync('tollgate/v1/replica.proto', { keepCase: true, longs: String,
    includeDirs: [path.join(ROOT, 'api')] });
  const Replica = grpc.loadPackageDefinition(def).tollgate.v1.ReplicaService;
  const rc = new Replica(cpA.addr, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set('tg-peer-secret', 'f'.repeat(64));
  const refused = await new Promise((resolve) => rc.CopyLedger({ from_seq: 1 }, md, (e) => resolve(e)));
  assert.equal(refused?.code, grpc.status.UNAUTHENTICATED);
  assert.match(refused.details, /tg-peer-secret/);
  rc.close();

  // cp-b away while cp-a settles past the retention, and etcd forgets the history
  await cpB.stop();
  await settle(5);
  await until(async () => (await countPrefix(etcd.url, 'tg/settle/log/')) === 0,
    { timeoutMs: 15000, intervalMs: 200, what: 'retention to empty the settled log' });
  await compact(etcd.url);
  want = await chain(cpA);
  cpB = await startCp({ ...opts, nodeId: 'cp-b', dataDir: dirB });
  procs.push(cpB);
  await until(async () => (await chain(cpB)).join() === want.join(),
    { timeoutMs: 20000, intervalMs: 200, what: 'cp-b to catch up from cp-a by itself' });
  assert.match(cpB.proc.output(), /caught up from peer cp-a: copied 15 ledger rows/);
  // tailing goes on after the copy
  await settle(2);
  want = await chain(cpA);
  await until(async () => (await chain(cpB)).join() === want.join(), { timeoutMs: 10000, what: 'cp-b to tail again' });
  assert.equal(want.length, (await chain(cpB)).length, 'the same row count');

  // a tampered copy: cp-b away again; cp-a serves copies with one bit
  // flipped; cp-b refuses them, keeps its own rows, and catches up once a
  // good copy is served
  await cpB.stop();
  await settle(4);
  await until(async () => (await countPrefix(etcd.url, 'tg/settle/log/')) === 0,
    { timeoutMs: 15000, intervalMs: 200, what: 'retention to empty the settled log again' });
  await compact(etcd.url);
  const before = want;
  want = await chain(cpA);
  await cpA.stop();
  cpA = await startCp({ ...opts, env: { ...opts.env, TG_CP_TEST_TAMPER_COPY: '1' }, nodeId: 'cp-a', dataDir: dirA });
  procs.push(cpA);
  await waitLeader(cpA);
  cpB = await startCp({ ...opts, nodeId: 'cp-b', dataDir: dirB });
  procs.push(cpB);
  await until(() => /does not verify against this replica's chain: refused/.test(cpB.proc.output()),
    { timeoutMs: 15000, what: 'cp-b to refuse the altered copy' });
  assert.match(cpB.proc.output(), /chain hash differs/);
  // while its ledger lacks rows, cp-b sends ledger readers elsewhere
  await assert.rejects(chain(cpB), (e) => e.code === grpc.status.UNAVAILABLE && /catching up from a peer/.test(e.details));
  assert.equal(before.length, want.length - 12, 'cp-b lacked the 4 batches');
  // and it does not run for leader: alone (cp-a stopped, its lease revoked)
  // it stays a follower, and the error names the override
  await until(() => /cp-b does not run for leader while its ledger lacks rows/.test(cpB.proc.output()),
    { timeoutMs: 10000, what: 'cp-b to stay out of the election' });
  assert.match(cpB.proc.output(), /no peer could supply .*--accept-ledger-gap=on/);
  await cpA.stop();
  const mark = cpB.proc.output().length;
  await new Promise((res) => setTimeout(res, 2000)); // 4 campaign rounds
  assert.doesNotMatch(cpB.proc.output().slice(mark), /cp-b won the leader lease/);
  cpA = await startCp({ ...opts, nodeId: 'cp-a', dataDir: dirA });
  procs.push(cpA);
  await until(async () => (await chain(cpB)).join() === want.join(),
    { timeoutMs: 20000, intervalMs: 200, what: 'cp-b to catch up from the good copy' });
  await cpA.stop();
  await cpB.stop();
  procs.length = 1;
});
