// How fast a config change reaches connected Sync streams: --streams agents
// keep Sync open; --changes price-card publications are made through the
// AdminService one after another; for each, the time from starting the
// admin call to the Update arriving on every stream.
//
//   TG_BIN=$(bazel info bazel-bin) node bench/cp/sync_latency.mjs [--store lmdb|etcd]
//       [--streams 20] [--changes 30]
import { FakeAgent, seed, startCp, startEtcd } from '../../tests/e2e/cp_agent_lib.mjs';
import { until } from '../../tests/e2e/lib/proc.mjs';

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const storeKind = arg('store', 'lmdb');
const nStreams = Number(arg('streams', 20));
const nChanges = Number(arg('changes', 30));

let etcd;
let cp;
try {
  if (storeKind === 'etcd') etcd = await startEtcd();
  cp = await startCp({ store: etcd ? `etcd:${etcd.url}` : undefined, nodeId: 'bench', heartbeatMs: 5000 });
  const ids = await seed(cp, { topup: 0n });
  const streams = [];
  for (let i = 0; i < nStreams; i++) {
    const a = new FakeAgent(cp, `sync-${i}`);
    await a.enroll();
    streams.push(a.sync());
  }
  await until(() => streams.every((s) => s.messages.length >= 1), { timeoutMs: 20000, what: 'snapshots' });
  const lat = [];
  for (let c = 0; c < nChanges; c++) {
    const t0 = Date.now();
    const card = await cp.adminCall('PublishPriceCard', { card: { id: ids.card, currency: 'USD', note: `c${c}`,
      entries: [{ model: 'gpt-4o', input_per_mtok_nano: String(1000 + c), output_per_mtok_nano: '2000' }] } });
    const got = await until(() => {
      const at = streams.map((s) => s.messages.find((x) => x.m.update?.changes.some((ch) => ch.price_card?.version === card.version))?.at);
      return at.every(Boolean) && at;
    }, { timeoutMs: 5000, intervalMs: 1, what: `change ${c} on every stream` });
    lat.push(Math.max(...got) - t0);
  }
  lat.sort((x, y) => x - y);
  console.log(`store=${storeKind} streams=${nStreams} changes=${nChanges}: admin call start -> update on every stream: ` +
    `p50 ${lat[Math.floor(lat.length / 2)]} ms, p99/max ${lat[lat.length - 1]} ms (includes the audited admin write)`);
  for (const s of streams) s.stream.cancel();
} finally {
  await cp?.stop();
  await etcd?.proc.stop('SIGKILL');
}
process.exit(0);
