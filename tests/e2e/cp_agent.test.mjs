// The control plane's AgentService as an edge agent sees it, on both store
// backends (embedded LMDB, and a real etcd on free loopback ports): enroll,
// Sync (snapshot, then an update within 1 s of an admin change, heartbeats),
// signed usage reports settled exactly once with costs recomputed from the
// tokens, resends, bad signatures, and two agents reporting concurrently.
// The agent here is independent of the C code: node:crypto Ed25519,
// protobufjs encoding, @grpc/grpc-js.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { until } from './lib/proc.mjs';
import { FakeAgent, balance, call, costOf, grpc, startSettling } from './cp_agent_lib.mjs';

for (const backend of ['lmdb', 'etcd']) describe(backend, () => {
  const ctx = {};

  before(() => startSettling(ctx, backend, 'cp-e2e'));

  after(async () => {
    await ctx.cp?.stop();
    await ctx.etcd?.proc.stop('SIGKILL');
  });

  test(`${backend}: enroll checks the token, the key and the name`, async () => {
    const cp = ctx.cp;
    const a = new FakeAgent(cp);
    await assert.rejects(call(cp.agentSvc, 'Enroll', { enrollment_token: 'wrong', name: 'x', public_key: a.pub }),
      (e) => e.code === grpc.status.UNAUTHENTICATED && /enrollment token/.test(e.details));
    await assert.rejects(call(cp.agentSvc, 'Enroll', { enrollment_token: 'enroll-e2e-secret', name: 'x', public_key: a.pub.subarray(0, 31) }),
      (e) => e.code === grpc.status.INVALID_ARGUMENT && /public_key/.test(e.details));
    await assert.rejects(call(cp.agentSvc, 'Enroll', { enrollment_token: 'enroll-e2e-secret', name: '', public_key: a.pub }),
      (e) => e.code === grpc.status.INVALID_ARGUMENT && /name/.test(e.details));
    const r = await a.enroll();
    assert.match(r.agent_id, /^agt_[0-9A-Z]{26}$/);
    const list = await cp.adminCall('ListAgents', {});
    assert.ok(list.agents.some((x) => x.agent_id === r.agent_id && x.name === 'edge-1'));
  });

  test(`${backend}: Sync sends a snapshot, then a price change within 1 s, then heartbeats`, async () => {
    const cp = ctx.cp;
    const a = new FakeAgent(cp);
    await a.enroll();
    // a bad proof is refused
    const bad = await a.proof();
    bad.signature = Buffer.from(bad.signature).fill(7, 0, 4);
    const refused = await a.sync(0, bad);
    const err = await refused.ended;
    assert.equal(err?.code, grpc.status.UNAUTHENTICATED);
    const stale = await a.sync(0, await a.proof(BigInt(Date.now() - 10 * 60 * 1000) * 1000n));
    assert.equal((await stale.ended)?.code, grpc.status.UNAUTHENTICATED);

    const s = await a.sync();
    await until(() => s.messages.length >= 1, { timeoutMs: 5000, what: 'the snapshot' });
    const snap = s.messages[0].m.snapshot;
    assert.ok(snap, `first message is a snapshot: ${JSON.stringify(s.messages[0].m).slice(0, 200)}`);
    assert.ok(Number(snap.revision) > 0);
    assert.ok(snap.accounts.some((x) => x.id === ctx.ids.account));
    assert.ok(snap.channels.some((x) => x.id === ctx.ids.channel));
    const w = snap.balances.find((x) => x.account_id === ctx.ids.account && x.bucket === 'wallet');
    assert.ok(w, 'the snapshot carries balances');
    const cards = snap.price_cards.filter((x) => x.id === ctx.ids.card);
    assert.equal(cards.length, 1, 'one version of the card in effect');

    // publish a new version through the admin API; time it to the update
    const t0 = Date.now();
    const n0 = s.messages.length;
    const pub = await ctx.cp.adminCall('PublishPriceCard', { card: { id: ctx.ids.card, currency: 'USD', note: 'raise',
      entries: [{ model: 'gpt-4o', input_per_mtok_nano: '3000000000', output_per_mtok_nano: '12000000000' }] } });
    const upd = await until(() => s.messages.slice(n0).find((x) => x.m.update &&
      x.m.update.changes.some((c) => c.price_card && c.price_card.version === pub.version)), { timeoutMs: 3000, what: 'the price update' });
    const lag = upd.at - t0;
    assert.ok(lag < 1000, `update arrived ${lag} ms after the publish call started`);
    assert.ok(Number(upd.m.update.revision) > Number(snap.revision));
    // a delete arrives as deleted=true with the object's id
    const tmp = await ctx.cp.adminCall('CreateChannel', { channel: { name: `tmp-${Date.now()}`, provider: 'PROVIDER_TYPE_OPENAI',
      base_url: 'http://127.0.0.1:9/v1', route_type: 'ROUTE_TYPE_DIRECT', credential: 'sk-upstream-x' } });
    await until(() => s.messages.some((x) => x.m.update?.changes.some((c) => c.channel?.id === tmp.id && !c.deleted)),
      { timeoutMs: 3000, what: 'the channel create' });
    await ctx.cp.adminCall('DeleteChannel', { id: tmp.id });
    await until(() => s.messages.some((x) => x.m.update?.changes.some((c) => c.deleted && c.channel?.id === tmp.id)),
      { timeoutMs: 3000, what: 'the channel delete' });
    // a scheduled version (effective tomorrow) is pushed too, and a fresh
    // snapshot holds both the current and the scheduled one
    const tomorrow = String((Date.now() + 86400000) * 1000);
    await ctx.cp.adminCall('PublishPriceCard', { card: { id: ctx.ids.card, currency: 'USD', effective_at_us: tomorrow,
      entries: [{ model: 'gpt-4o', input_per_mtok_nano: '1', output_per_mtok_nano: '1' }] } });
    const s2 = await a.sync();
    await until(() => s2.messages.length >= 1, { timeoutMs: 5000, what: 'the second snapshot' });
    const c2 = s2.messages[0].m.snapshot.price_cards.filter((x) => x.id === ctx.ids.card).map((x) => x.version);
    assert.deepEqual(c2.sort(), [pub.version, String(Number(pub.version) + 1)].sort());
    // heartbeats every --heartbeat-ms (1000) when idle
    const n1 = s.messages.length;
    await until(() => s.messages.slice(n1).some((x) => x.m.heartbeat), { timeoutMs: 4000, what: 'a heartbeat' });
    // an agent that has the current revision gets no snapshot, only a heartbeat
    const rev = s2.messages[0].m.snapshot.revision;
    const s3 = await a.sync(rev);
    await until(() => s3.messages.length >= 1, { timeoutMs: 3000, what: 'the first message for a current agent' });
    assert.ok(s3.messages[0].m.heartbeat, 'a current agent gets a heartbeat, not a snapshot');
    for (const x of [s, s2, s3]) x.stream.cancel();
    // the agent shows as seen, with its snapshot revision
    await until(async () => {
      const list = await ctx.cp.adminCall('ListAgents', {});
      const me = list.agents.find((x) => x.agent_id === a.id);
      return me && Number(me.snapshot_revision) > 0 && Number(me.last_seen_at_us) > 0;
    }, { timeoutMs: 5000, what: 'AgentInfo to record the sync' });
  });

  test(`${backend}: a captured proof cannot be replayed, on Sync or Lease, even within its time window`, async () => {
    const cp = ctx.cp;
    const a = new FakeAgent(cp);
    await a.enroll();
    // (a proof without a nonce, the old scheme: agent_cp_oldproof.test.mjs)
    // a valid proof opens Sync once; the same proof again is refused
    const captured = await a.proof();
    const first = await a.sync(0, captured);
    await until(() => first.messages.length >= 1, { timeoutMs: 5000, what: 'the snapshot' });
    first.stream.cancel();
    const replay = await a.sync(0, captured);
    const re = await replay.ended;
    assert.equal(re?.code, grpc.status.UNAUTHENTICATED, 'a replayed Sync proof is refused');
    assert.match(re.details, /nonce already used/);
    assert.equal(replay.messages.length, 0, 'nothing of the configuration is sent');

    // Lease: the request with its proof, sent twice; the answer carries the
    // next nonce, which works once too
    const q = { account_id: ctx.ids.account, bucket: 'wallet', requested_nano: '1000', reset: true,
      proof: await a.proof() };
    const r1 = await call(cp.agentSvc, 'Lease', q);
    assert.ok(Buffer.from(r1.next_nonce).length > 0, 'the answer carries a nonce for the next proof');
    await assert.rejects(call(cp.agentSvc, 'Lease', q),
      (e) => e.code === grpc.status.UNAUTHENTICATED && /nonce already used/.test(e.details));
    const q2 = { ...q, reset: false, requested_nano: '0', proof: await a.proof(undefined, { nonce: r1.next_nonce }) };
    await call(cp.agentSvc, 'Lease', q2);
    await assert.rejects(call(cp.agentSvc, 'Lease', q2),
      (e) => e.code === grpc.status.UNAUTHENTICATED && /nonce already used/.test(e.details));
    // another agent's nonce is no good either
    const b = new FakeAgent(cp, 'edge-other');
    await b.enroll();
    const stolen = await b.proof(undefined, { nonce: await a.challenge() });
    await assert.rejects(call(cp.agentSvc, 'Lease', { ...q, proof: stolen }),
      (e) => e.code === grpc.status.UNAUTHENTICATED && /nonce/.test(e.details));
    // give the hold back
    await call(cp.agentSvc, 'Lease', { ...q, reset: false, requested_nano: '0', keep_nano: '0', proof: await a.proof() });
  });

  test(`${backend}: a signed batch moves the balance by exactly the recomputed cost, once`, async () => {
    const cp = ctx.cp;
    const a = new FakeAgent(cp);
    await a.enroll();
    const before = await balance(cp, ctx.ids.account);
    // the cards' version in effect: reprice from the card the record names
    const card = await cp.adminCall('GetPriceCard', { id: ctx.ids.card, version: String(ctx.ids.version) });
    assert.equal(card.version, String(ctx.ids.version));
    const recs = [
      a.record(ctx.ids, { tokens: { input_tokens: 1000, output_tokens: 500 } }),
      a.record(ctx.ids, { tokens: { input_tokens: 123457, output_tokens: 1, cache_read_tokens: 999 } }),
      a.record(ctx.ids, { tokens: { input_tokens: 10, output_tokens: 10 }, costNano: 1n }), // wrong cost
    ];
    const want = recs.reduce((s, r) => s + costOf(r.usage), 0n);
    const req = a.signed(recs);
    const r1 = await a.report(req);
    assert.equal(r1.duplicate_batch, false);
    assert.equal(r1.settled, 3);
    assert.equal(r1.cost_mismatches, 1);
    assert.equal(r1.duplicate_records, 0);
    assert.ok(Number(r1.ledger_seq) > 0);
    assert.equal(await balance(cp, ctx.ids.account), before - want);

    // resend: the stored answer, nothing charged
    const r2 = await a.report(req);
    assert.equal(r2.duplicate_batch, true);
    assert.equal(r2.settled, 3);
    assert.equal(await balance(cp, ctx.ids.account), before - want);

    // a later batch repeating a settled record id charges only the new one
    const fresh = a.record(ctx.ids, { tokens: { input_tokens: 7, output_tokens: 7 } });
    const r3 = await a.report(a.signed([recs[0], fresh]));
    assert.equal(r3.settled, 1);
    assert.equal(r3.duplicate_records, 1);
    assert.equal(await balance(cp, ctx.ids.account), before - want - costOf(fresh.usage));

    // the ledger holds the rows with the recomputed cost and the mismatch flag
    const page = await cp.adminCall('QueryLedger', { account_id: ctx.ids.account, page_size: 1000 });
    const row = page.entries.find((e) => e.entry_id === recs[2].record_id);
    assert.ok(row, 'the mismatched record is in the ledger');
    assert.equal(row.cost_mismatch, true);
    assert.equal(BigInt(row.amount_nano), -costOf(recs[2].usage));
    assert.equal(BigInt(row.recomputed_cost_nano), costOf(recs[2].usage));
    // upstream cost: official price x the channel's cost rate (0.7)
    assert.equal(BigInt(row.record.upstream_cost_nano), costOf(recs[2].usage, 700000n));
  });

  test(`${backend}: bad signatures, unknown agents and foreign batches are refused`, async () => {
    const cp = ctx.cp;
    const a = new FakeAgent(cp);
    await a.enroll();
    const other = crypto.generateKeyPairSync('ed25519').privateKey;
    const before = await balance(cp, ctx.ids.account);
    const recs = [a.record(ctx.ids)];
    await assert.rejects(a.report(a.signed(recs, 1, { key: other })),
      (e) => e.code === grpc.status.UNAUTHENTICATED && e.details === `bad signature for agent ${a.id}`);
    const tampered = a.signed(recs, 2);
    tampered.batch[tampered.batch.length - 1] ^= 1;
    await assert.rejects(a.report(tampered), (e) => e.code === grpc.status.UNAUTHENTICATED);
    const ghost = a.signed(recs, 3, { agentId: 'agt_NOBODY' });
    await assert.rejects(a.report(ghost), (e) => e.code === grpc.status.UNAUTHENTICATED && /unknown agent/.test(e.details));
    // agent B cannot report a batch claiming to be agent A's
    const b = new FakeAgent(cp, 'edge-b');
    await b.enroll();
    const forged = b.signed(recs, 4, { agentId: a.id });
    await assert.rejects(a.report(forged), (e) => e.code === grpc.status.UNAUTHENTICATED);
    assert.equal(await balance(cp, ctx.ids.account), before);
  });

  test(`${backend}: two agents reporting concurrently: sums exact`, async () => {
    const cp = ctx.cp;
    const agents = [new FakeAgent(cp, 'c1'), new FakeAgent(cp, 'c2')];
    for (const a of agents) await a.enroll();
    const before = await balance(cp, ctx.ids.account);
    let want = 0n;
    const jobs = [];
    for (const a of agents) {
      for (let i = 0; i < 10; i++) {
        const recs = [];
        for (let j = 0; j < 20; j++) {
          const r = a.record(ctx.ids, { tokens: { input_tokens: 100 + i * 7 + j, output_tokens: 3 * j + 1 } });
          want += costOf(r.usage);
          recs.push(r);
        }
        const req = a.signed(recs);
        // each batch is also sent twice at once: the copy must not charge
        jobs.push(a.report(req), a.report(req));
      }
    }
    const res = await Promise.all(jobs);
    const settled = res.filter((r) => !r.duplicate_batch).reduce((s, r) => s + r.settled, 0);
    assert.equal(settled, 400);
    assert.equal(await balance(cp, ctx.ids.account), before - want);
  });

  test(`${backend}: top-ups are idempotent and prepaid adjustments cannot go below zero`, async () => {
    const cp = ctx.cp;
    const before = await balance(cp, ctx.ids.account);
    const req = { account_id: ctx.ids.account, bucket: 'wallet', amount_nano: '5000', currency: 'USD',
      idempotency_key: `t-${backend}`, reason: 'test' };
    const t1 = await cp.adminCall('TopUp', req);
    assert.equal(t1.duplicate, false);
    assert.equal(t1.entry.kind, 'LEDGER_KIND_TOPUP');
    assert.equal(t1.entry.actor.token_name, 'e2e');
    const t2 = await cp.adminCall('TopUp', req);
    assert.equal(t2.duplicate, true);
    assert.equal(await balance(cp, ctx.ids.account), before + 5000n);
    // the same key for a different change is a conflict naming the difference, not a "duplicate"
    await assert.rejects(cp.adminCall('TopUp', { ...req, amount_nano: '5001' }), (e) => e.code === grpc.status.ALREADY_EXISTS &&
      new RegExp(`^idempotency_key 't-${backend}' was used by another change \\(entry top_\\w+\\): amount_nano 5000 there, 5001 here`).test(e.details));
    await assert.rejects(cp.adminCall('TopUp', { ...req, reason: 'other' }), (e) => e.code === grpc.status.ALREADY_EXISTS &&
      /reason 'test' there, 'other' here/.test(e.details));
    await assert.rejects(cp.adminCall('Adjust', req), (e) => e.code === grpc.status.ALREADY_EXISTS &&
      /kind a top-up there, an adjustment here/.test(e.details));
    assert.equal((await cp.adminCall('TopUp', req)).duplicate, true, 'the same request still answers the first result');
    assert.equal(await balance(cp, ctx.ids.account), before + 5000n);
    await assert.rejects(cp.adminCall('Adjust', { account_id: ctx.ids.account, bucket: 'wallet',
      amount_nano: String(-(before + 5001n)), idempotency_key: `adj-${backend}`, reason: 'too much' }),
    (e) => e.code === grpc.status.FAILED_PRECONDITION);
    await assert.rejects(cp.adminCall('TopUp', { ...req, amount_nano: '0', idempotency_key: 'z' }),
      (e) => e.code === grpc.status.INVALID_ARGUMENT && /amount_nano/.test(e.details));
    const adj = await cp.adminCall('Adjust', { account_id: ctx.ids.account, bucket: 'wallet',
      amount_nano: '-5000', idempotency_key: `adj2-${backend}`, reason: 'refund reversal' });
    assert.equal(adj.entry.kind, 'LEDGER_KIND_ADJUSTMENT');
    assert.equal(BigInt(adj.balance.balance_nano), before);
    // a signed checkpoint of the ledger head verifies with node:crypto
    const ck = await cp.adminCall('GetCheckpoint', {});
    const be = Buffer.alloc(8);
    be.writeBigUInt64BE(BigInt(ck.seq));
    const msg = Buffer.concat([Buffer.from('tollgate-checkpoint-v1'), be, ck.hash]);
    const pub = crypto.createPublicKey({ key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), ck.public_key]), format: 'der', type: 'spki' });
    assert.ok(Number(ck.seq) > 0);
    assert.equal(crypto.verify(null, msg, pub, ck.signature), true);
  });
});
