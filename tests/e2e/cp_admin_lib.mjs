// Helpers for the control plane's admin-side e2e tests (cp_admin*,
// tollctl_admin*): a real tollgate-cp with three admin tokens (admin,
// pricing, reader) on LMDB or a real etcd, and AdminService clients written
// with @grpc/grpc-js + @grpc/proto-loader straight from api/*.proto, so
// nothing of the C code is trusted to check itself.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { ROOT, bin, start, tmpdir, until } from './lib/proc.mjs';

import { ENROLL_TOKEN } from './cp_agent_lib.mjs';

export { startEtcd } from './cp_agent_lib.mjs';

const API = path.join(ROOT, 'api');
const opts = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [API] };
const def = protoLoader.loadSync(['tollgate/v1/admin.proto', 'tollgate/v1/agent.proto'], opts);
export const pkg = grpc.loadPackageDefinition(def).tollgate.v1;

export const TOKENS = {
  admin: 'tg-admin-token-aaaaaaaaaaaaaaaa',
  pricing: 'tg-pricing-token-bbbbbbbbbbbbbbbb',
  reader: 'tg-reader-token-cccccccccccccccc',
};

// Starts tollgate-cp; resolves with { proc, grpcAddr, httpAddr, dataDir,
// as(role) -> client with call(method, req), stop(signal) }.
export async function startCp({ store, dataDir = tmpdir('tg-cpadm-'), extra = [] } = {}) {
  const tokens = path.join(dataDir, 'admin-tokens');
  writeFileSync(tokens, [
    '# e2e tokens: name role token',
    `ops admin ${TOKENS.admin}`,
    `pricebot pricing ${TOKENS.pricing}`,
    `auditor reader ${TOKENS.reader}`,
    '',
  ].join('\n'));
  const args = ['--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--data-dir', dataDir,
    '--admin-tokens', tokens, '--enroll-token', ENROLL_TOKEN, '--node-id', 'cp-admin-e2e',
    '--log-level', 'info', ...extra];
  if (store) args.push('--store', store);
  const proc = start(bin('controlplane/tollgate-cp'), args);
  const m = await until(() => /^tollgate-cp grpc=([\d.]+:\d+) http=([\d.]+:\d+)$/m.exec(proc.output()),
    { timeoutMs: 20000, what: 'tollgate-cp to print its addresses' });
  const grpcAddr = m[1];
  const clients = [];
  const cp = {
    proc, grpcAddr, httpAddr: m[2], dataDir, tokensFile: tokens,
    // A client calling with role's token (or `token` itself when not a role;
    // null: no authorization metadata at all).
    as(role) {
      const c = new pkg.AdminService(grpcAddr, grpc.credentials.createInsecure());
      clients.push(c);
      const token = role === null ? null : (TOKENS[role] ?? role);
      const md = () => {
        const x = new grpc.Metadata();
        if (token !== null) x.set('authorization', `Bearer ${token}`);
        return x;
      };
      return {
        raw: c,
        md,
        call(method, req = {}, ms = 15000) {
          return new Promise((resolve, reject) => {
            c[method](req, md(), { deadline: Date.now() + ms }, (err, reply) => (err ? reject(err) : resolve(reply)));
          });
        },
        // Collects a server stream's messages.
        stream(method, req = {}, ms = 30000) {
          return new Promise((resolve, reject) => {
            const out = [];
            const s = c[method](req, md(), { deadline: Date.now() + ms });
            s.on('data', (d) => out.push(d));
            s.on('error', reject);
            s.on('end', () => resolve(out));
          });
        },
      };
    },
    // What cp_agent_lib's FakeAgent and seed() expect of a control plane.
    get agentSvc() {
      if (!this._agentSvc) {
        this._agentSvc = new pkg.AgentService(grpcAddr, grpc.credentials.createInsecure());
        clients.push(this._agentSvc);
      }
      return this._agentSvc;
    },
    adminCall(method, req) {
      if (!this._admin) this._admin = this.as('admin');
      return this._admin.call(method, req);
    },
    async stop(sig = 'SIGTERM') {
      for (const c of clients) c.close();
      return proc.stop(sig, 10000);
    },
  };
  return cp;
}

// Asserts that promise p rejects with gRPC status `code` (a grpc.status
// name) and a message matching re.
export async function rejects(assert, p, code, re) {
  await assert.rejects(p, (e) => {
    assert.equal(e.code, grpc.status[code], `expected ${code}, got ${grpc.status[e.code] ?? e.code}: ${e.details}`);
    if (re) assert.match(e.details, re);
    return true;
  });
}

export const ACCOUNT = (name) => ({
  name, billing_mode: 'BILLING_MODE_PREPAID',
  buckets: [{ name: 'credit', currency: 'USD' }, { name: 'wallet', currency: 'USD' }],
});

export const CHANNEL = (name, extra = {}) => ({
  name, provider: 'PROVIDER_TYPE_OPENAI', base_url: 'http://127.0.0.1:9/v1',
  route_type: 'ROUTE_TYPE_POOLED', cost_rate_ppm: '700000', ...extra,
});

export { grpc };
