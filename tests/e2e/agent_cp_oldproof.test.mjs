// Upgrade order (docs/ARCHITECTURE.md, "Agent proofs that cannot be
// replayed"): an agent newer than its control plane still syncs. The control
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

let server;
let agent;
after(async () => {
  await agent?.stop();
  server?.forceShutdown();
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
