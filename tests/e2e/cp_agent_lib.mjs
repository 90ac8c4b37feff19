// Helpers for the control plane's agent-side e2e tests (cp_agent*, cp_settle*,
// cp_replicas*): a real tollgate-cp on LMDB or on a real etcd started on free
// loopback ports, an AdminService client (@grpc/grpc-js), and a fake edge
// agent written independently of the C code: Ed25519 from node:crypto,
// protobuf encoding from protobufjs, costs recomputed with BigInt by the
// documented rule (billing/README.md).
import crypto from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import { ROOT, bin, freePort, start, tmpdir, until } from './lib/proc.mjs';

const API = path.join(ROOT, 'api');
const opts = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [API] };
const def = protoLoader.loadSync(['tollgate/v1/agent.proto', 'tollgate/v1/admin.proto'], opts);
const pkg = grpc.loadPackageDefinition(def).tollgate.v1;

const root = new protobuf.Root();
root.resolvePath = (_origin, target) => path.join(API, target);
root.loadSync('tollgate/v1/usage.proto', { keepCase: true });
const UsageBatch = root.lookupType('tollgate.v1.UsageBatch');

export const ADMIN_TOKEN = 'tg-admin-e2e-token-0123456789';
export const ENROLL_TOKEN = 'enroll-e2e-secret';

// Promisified unary call with a deadline.
export function call(client, method, req, md = new grpc.Metadata(), ms = 10000) {
  return new Promise((resolve, reject) => {
    client[method](req, md, { deadline: Date.now() + ms }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

// ---- etcd -------------------------------------------------------------------

// Starts etcd on free loopback ports; given the { dir, client, peer } of an
// earlier one (killed), restarts it on the same data dir and ports.
// Resolves { url, proc, dir, client, peer }.
export async function startEtcd({ dir = tmpdir('tg-etcd-'), client, peer } = {}) {
  client = client ?? await freePort();
  peer = peer ?? await freePort();
  const url = `http://127.0.0.1:${client}`;
  const purl = `http://127.0.0.1:${peer}`;
  const proc = start('/usr/bin/etcd', ['--data-dir', path.join(dir, 'data'), '--listen-client-urls', url,
    '--advertise-client-urls', url, '--listen-peer-urls', purl, '--initial-advertise-peer-urls', purl,
    '--initial-cluster', `default=${purl}`, '--log-level', 'warn',
    ...(process.env.TG_ETCD_PPROF ? ['--enable-pprof'] : [])]);
  await until(async () => {
    const r = await fetch(`${url}/v3/maintenance/status`, { method: 'POST', body: '{}' });
    return r.ok;
  }, { timeoutMs: 20000, what: 'etcd to answer' });
  return { url, proc, dir, client, peer };
}

// ---- tollgate-cp ------------------------------------------------------------

// Starts tollgate-cp; resolves with { proc, port, admin, agentSvc, dataDir, stop() }.
export async function startCp({ store, dataDir = tmpdir('tg-cp-'), nodeId = 'cp-a', env = {}, heartbeatMs = 1000, extraArgs = [],
  extraTokens = '' } = {}) {
  const tokens = path.join(dataDir, 'admin-tokens');
  writeFileSync(tokens, `e2e admin ${ADMIN_TOKEN}\n${extraTokens}`);
  const args = ['--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--data-dir', dataDir,
    '--admin-tokens', tokens, '--enroll-token', ENROLL_TOKEN, '--node-id', nodeId,
    '--heartbeat-ms', String(heartbeatMs), '--log-level', process.env.TG_CP_LOG_LEVEL || 'info'];
  if (store) args.push('--store', store);
  args.push(...extraArgs);
  const proc = start(bin('controlplane/tollgate-cp'), args, { env: { ...process.env, ...env } });
  const port = await until(() => {
    const m = /tollgate-cp grpc=[\d.]+:(\d+)/.exec(proc.output());
    return m && Number(m[1]);
  }, { timeoutMs: 15000, what: 'tollgate-cp to print its port' });
  const addr = `127.0.0.1:${port}`;
  const http = Number(/tollgate-cp grpc=\S+ http=[\d.]+:(\d+)/.exec(proc.output())[1]);
  const admin = new pkg.AdminService(addr, grpc.credentials.createInsecure());
  const agentSvc = new pkg.AgentService(addr, grpc.credentials.createInsecure());
  return {
    proc, port, http, addr, admin, agentSvc, dataDir, nodeId,
    // GET /metrics as text (the HTTP port)
    async metrics() {
      return (await fetch(`http://127.0.0.1:${http}/metrics`)).text();
    },
    adminCall(method, req, token = ADMIN_TOKEN) {
      const md = new grpc.Metadata();
      md.set('authorization', `Bearer ${token}`);
      return call(admin, method, req, md);
    },
    async stop(sig = 'SIGTERM') {
      admin.close();
      agentSvc.close();
      return proc.stop(sig);
    },
  };
}

// Starts tollgate-cp on backend ('lmdb', or 'etcd': a fresh etcd on free
// loopback ports), seeds it (seed() below) and waits until it settles
// (its single-replica election won). Fills ctx.etcd, ctx.cp, ctx.ids.
export async function startSettling(ctx, backend, nodeId, env = {}) {
  if (backend === 'etcd') {
    ctx.etcd = await startEtcd();
    ctx.cp = await startCp({ store: `etcd:${ctx.etcd.url}`, nodeId, env });
  } else {
    ctx.cp = await startCp({ nodeId, env });
  }
  ctx.ids = await seed(ctx.cp);
  await waitLeader(ctx.cp);
  return ctx;
}

// Waits until cp settles (an empty batch from agent, or a new probe agent,
// is accepted rather than refused as "not the settling leader").
export async function waitLeader(cp, agent, timeoutMs = 15000) {
  const a = agent || new FakeAgent(cp, 'probe');
  if (!agent) await a.enroll();
  await until(async () => {
    try { await a.report(a.signed([])); return true; } catch (e) { if (/not the settling leader/.test(e.details)) return false; throw e; }
  }, { timeoutMs, what: 'the control plane to become the settling leader' });
}

// ---- fixtures ---------------------------------------------------------------

export const PRICE = { input: 2500000333n, output: 10000000007n, cacheRead: 1250000001n, rate: 1234567n };

// A prepaid account with credit and wallet buckets (USD), a pooled channel
// with a cost rate, and a price card for gpt-4o. Returns their ids.
export async function seed(cp, { topup = 100n * 1000000000n, name = 'acme' } = {}) {
  const acct = await cp.adminCall('CreateAccount', { account: {
    name, billing_mode: 'BILLING_MODE_PREPAID',
    buckets: [{ name: 'credit', currency: 'USD' }, { name: 'wallet', currency: 'USD' }],
  } });
  const ch = await cp.adminCall('CreateChannel', { channel: {
    name: `pool-${name}`, provider: 'PROVIDER_TYPE_OPENAI', base_url: 'http://127.0.0.1:9/v1',
    route_type: 'ROUTE_TYPE_POOLED', cost_rate_ppm: '700000', credential: 'sk-upstream',
  } });
  const card = await cp.adminCall('PublishPriceCard', { card: {
    id: `card-${name}`, currency: 'USD', note: 'e2e',
    entries: [{ model: 'gpt-4o', input_per_mtok_nano: String(PRICE.input), output_per_mtok_nano: String(PRICE.output),
      cache_read_per_mtok_nano: String(PRICE.cacheRead), rate_ppm: String(PRICE.rate) }],
  } });
  if (topup > 0n) {
    await cp.adminCall('TopUp', { account_id: acct.id, bucket: 'wallet', amount_nano: String(topup),
      currency: 'USD', idempotency_key: `seed-${name}`, reason: 'e2e seed' });
  }
  return { account: acct.id, channel: ch.id, card: card.id, version: BigInt(card.version) };
}

// Every ledger row of an account on this replica (its own ledger), by id.
export async function ledgerRows(cp, account) {
  const rows = new Map();
  let token = '';
  for (let i = 0; i < 50; i++) {
    const p = await cp.adminCall('QueryLedger', { account_id: account, page_size: 1000, page_token: token });
    for (const e of p.entries) rows.set(e.entry_id, e);
    token = p.next_page_token;
    if (!token) break;
  }
  return rows;
}

export async function balance(cp, account, bucket = 'wallet') {
  const r = await cp.adminCall('GetBalances', { account_id: account });
  const b = r.balances.find((x) => x.bucket === bucket);
  return b ? BigInt(b.balance_nano) : 0n;
}

// The cost rule of billing/ (billing/README.md), in BigInt: the per-request
// fee is whole nano-units like the image price, the rate applies to it too,
// and the sum is rounded half up once.
export function costOf(u, rate = PRICE.rate, perRequest = 0n) {
  const base = BigInt(u.input_tokens || 0) * PRICE.input + BigInt(u.output_tokens || 0) * PRICE.output +
    BigInt(u.cache_read_tokens || 0) * PRICE.cacheRead + perRequest * 1000000n;
  return (base * rate + 500000000000n) / 1000000000000n;
}

// ---- fake agent -------------------------------------------------------------

export class FakeAgent {
  constructor(cp, name = 'edge-1') {
    this.cp = cp;
    this.name = name;
    const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
    this.priv = privateKey;
    // the raw 32 bytes are the tail of the SPKI DER encoding
    this.pub = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
    this.seq = 0;
  }

  async enroll() {
    const r = await call(this.cp.agentSvc, 'Enroll', { enrollment_token: ENROLL_TOKEN, name: this.name,
      region: 'test', public_key: this.pub, version: 'e2e' });
    this.id = r.agent_id;
    return r;
  }

  // A nonce from the replica (Challenge), good for one proof there.
  async challenge(cp = this.cp) {
    return (await call(cp.agentSvc, 'Challenge', { agent_id: this.id })).nonce;
  }

  // An AgentProof over a fresh nonce of cp (or the given nonce).
  async proof(ts = BigInt(Date.now()) * 1000n, { cp = this.cp, nonce } = {}) {
    nonce = nonce ?? await this.challenge(cp);
    const be = Buffer.alloc(8);
    be.writeBigInt64BE(ts);
    const msg = Buffer.concat([Buffer.from('tollgate-agent-v2'), Buffer.from(this.id), be, Buffer.from(nonce)]);
    return { agent_id: this.id, timestamp_us: String(ts), nonce, signature: crypto.sign(null, msg, this.priv) };
  }

  // The proof of an agent older than nonces: "tollgate-agent-v1" || id || ts.
  legacyProof(ts = BigInt(Date.now()) * 1000n) {
    const be = Buffer.alloc(8);
    be.writeBigInt64BE(ts);
    const msg = Buffer.concat([Buffer.from('tollgate-agent-v1'), Buffer.from(this.id), be]);
    return { agent_id: this.id, timestamp_us: String(ts), signature: crypto.sign(null, msg, this.priv) };
  }

  // Opens Sync; messages are pushed to this.messages; returns the stream.
  async sync(haveRevision = 0, proof) {
    proof = proof ?? await this.proof();
    const messages = [];
    const s = this.cp.agentSvc.Sync({ proof, have_revision: String(haveRevision) });
    s.on('data', (m) => messages.push({ at: Date.now(), m }));
    const ended = new Promise((resolve) => {
      s.on('error', (e) => resolve(e));
      s.on('end', () => resolve(null));
    });
    return { stream: s, messages, ended };
  }

  record(ids, { tokens = { input_tokens: 1000, output_tokens: 500 }, costNano } = {}) {
    // agent id + a counter, like a real agent's outbox (ordered ids)
    this.rseq = (this.rseq || 0) + 1;
    const id = `${this.id}-${String(this.rseq).padStart(12, '0')}`;
    const c = costNano ?? costOf(tokens);
    return {
      record_id: id, request_id: id, agent_id: this.id, started_at_us: Date.now() * 1000,
      finished_at_us: Date.now() * 1000, key_id: 'key_e2e', project_id: 'prj_e2e', account_id: ids.account,
      requested_model: 'gpt-4o', route_model: 'gpt-4o', channel_id: ids.channel, upstream_model: 'gpt-4o',
      route_type: 2, bucket: 'wallet', usage: tokens, price_card_id: ids.card,
      price_version: Number(ids.version), currency: 'USD', cost_nano: Number(c), client_status: 200,
    };
  }

  // Encodes and signs a batch; returns the SignedUsageBatch request.
  signed(records, seq = ++this.seq, { key = this.priv, agentId = this.id } = {}) {
    const batch = UsageBatch.encode(UsageBatch.fromObject({ agent_id: agentId, sequence: seq,
      created_at_us: Date.now() * 1000, records })).finish();
    return { batch: Buffer.from(batch), signature: crypto.sign(null, batch, key), agent_id: agentId };
  }

  report(req, cp = this.cp) {
    return call(cp.agentSvc, 'ReportUsage', req, new grpc.Metadata(), 20000);
  }
}

export { grpc };
