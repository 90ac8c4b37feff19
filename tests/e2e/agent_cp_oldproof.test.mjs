// Upgrade order (docs/ARCHITECTURE.md, "Agent proofs that cannot be
// replayed"): control planes first, then agents, then --legacy-agent-proofs
// off. A real tollgate-cp accepts an old agent's proof without a nonce while
// the flag is on (the default this release), counts it and logs the agent
// once; with it off it refuses it naming the nonce.
//
// An agent newer than its control plane (a rollback) still syncs. The control
// plane here is a grpc-js AgentService as an older tollgate-cp was: no
// Challenge method (UNIMPLEMENTED), proofs without a nonce. The real
// tollgate-agent asks Challenge, gets UNIMPLEMENTED, and signs the old proof
// ("tollgate-agent-v1" || agent_id || timestamp), which verifies with the
// key it enrolled.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { startAgent } from '../../agent/testing/agent.mjs';
import { ROOT, until } from './lib/proc.mjs';
import { FakeAgent, startCp } from './cp_agent_lib.mjs';

let server;
let agent;
const cps = [];
after(async () => {
  await agent?.stop();
  server?.forceShutdown();
  for (const cp of cps) await cp.stop();
});

test('a control plane accepts an old agent\'s proof without a nonce by default, counted and logged once; --legacy-agent-proofs=off refuses it', async () => {
  const on = await startCp({ nodeId: 'cp-legacy-on' });
  cps.push(on);
  const a = new FakeAgent(on, 'old-edge');
  await a.enroll();
  for (let i = 0; i < 2; i++) {
    const s = await a.sync(0, a.legacyProof());
    await until(() => s.messages.length >= 1, { timeoutMs: 5000, what: 'the snapshot for the old proof' });
    assert.ok(s.messages[0].m.snapshot, 'the old agent gets its configuration');
    s.stream.cancel();
  }
  const m = await on.metrics();
  assert.match(m, /^tollgate_cp_legacy_proofs_total 2$/m);
  const logged = on.proc.output().split('\n').filter((l) => l.includes(`agent ${a.id} signs the old proof`));
  assert.equal(logged.length, 1, 'logged once per agent');
  // a new agent's proof is still single-use beside it
  const p = await a.proof();
  const first = await a.sync(0, p);
  await until(() => first.messages.length >= 1, { timeoutMs: 5000, what: 'the snapshot' });
  first.stream.cancel();
  const again = await (await a.sync(0, p)).ended;
  assert.match(again?.details || '', /nonce already used/);

  const off = await startCp({ nodeId: 'cp-legacy-off', extraArgs: ['--legacy-agent-proofs', 'off'] });
  cps.push(off);
  const b = new FakeAgent(off, 'old-edge-2');
  await b.enroll();
  const s = await b.sync(0, b.legacyProof());
  const e = await s.ended;
  assert.equal(e?.code, grpc.status.UNAUTHENTICATED);
  assert.match(e.details, /nonce required/);
  assert.equal(s.messages.length, 0, 'nothing of the configuration is sent');
  assert.match(await off.metrics(), /^tollgate_cp_legacy_proofs_total 0$/m);
});

test('an agent newer than its control plane signs the old proof when Challenge is unimplemented', async () => {
  const def = protoLoader.loadSync('tollgate/v1/agent.proto', { keepCase: true, longs: String, enums: String,
    defaults: true, oneofs: true, includeDirs: [path.join(ROOT, 'api')] });
  const svc = grpc.loadPackageDefinition(def).tollgate.v1.AgentService.service;
  const old = { ...svc };
  delete old.Challenge; // what an older control plane serves
  let pub = null;
  const proofs = [];
  server = new grpc.Server();
  server.addService(old, {
    Enroll(call, cb) {
      pub = Buffer.from(call.request.public_key);
      cb(null, { agent_id: 'agt_OLDCP', enrolled_at_us: String(Date.now() * 1000) });
    },
    Sync(call) {
      proofs.push(call.request.proof);
      call.write({ heartbeat: { revision: '1', sent_at_us: String(Date.now() * 1000) } });
    },
    ReportUsage(call, cb) { cb({ code: grpc.status.UNAVAILABLE, details: 'not in this test' }); },
    Lease(call, cb) { cb({ code: grpc.status.UNAVAILABLE, details: 'not in this test' }); },
  });
  const port = await new Promise((resolve, reject) => server.bindAsync('127.0.0.1:0',
    grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  agent = await startAgent(null, { noSnapshot: true, args: ['--cp', `127.0.0.1:${port}`, '--enroll-token', 'x'] });
  await until(() => proofs.length > 0, { timeoutMs: 10000, what: 'the agent to open Sync' });
  const p = proofs[0];
  assert.equal(p.agent_id, 'agt_OLDCP');
  assert.equal(Buffer.from(p.nonce).length, 0, 'no nonce to sign');
  const be = Buffer.alloc(8);
  be.writeBigInt64BE(BigInt(p.timestamp_us));
  const msg = Buffer.concat([Buffer.from('tollgate-agent-v1'), Buffer.from(p.agent_id), be]);
  const key = crypto.createPublicKey({ key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), pub]),
    format: 'der', type: 'spki' });
  assert.ok(crypto.verify(null, msg, key, Buffer.from(p.signature)), 'the old proof verifies with the enrolled key');
  assert.match(agent.proc.output(), /has no Challenge \(older than this agent\)/);
});
