// AdminService end to end, on both store backends (embedded LMDB and a real
// etcd), through an independent gRPC client (@grpc/grpc-js): what an
// operator or an integrator automating pricing would check. Roles and their
// exact messages, CRUD round trips with revisions, validation naming the
// field, key secrets shown once, channel credentials never returned, price
// card versions kept, pagination, the audit log with before/after, health
// and metrics, and a graceful SIGTERM.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { until } from './lib/proc.mjs';
import { startCp, startEtcd, rejects, ACCOUNT, CHANNEL, TOKENS } from './cp_admin_lib.mjs';

for (const backend of ['lmdb', 'etcd']) {
  describe(`AdminService on ${backend}`, () => {
    let cp, etcd, admin, pricing, reader;

    before(async () => {
      if (backend === 'etcd') etcd = await startEtcd();
      cp = await startCp({ store: etcd ? `etcd:${etcd.url}` : undefined });
      admin = cp.as('admin');
      pricing = cp.as('pricing');
      reader = cp.as('reader');
    });

    after(async () => {
      // a clean exit after all that work: graceful shutdown, nothing leaked
      // (with TG_BIN at the ASan build a leak or memory error makes the exit
      // code non-zero; tests/run.sh runs only the money suites that way)
      const exit = await cp?.stop('SIGTERM');
      await etcd?.proc.stop('SIGKILL');
      assert.deepEqual(exit, { code: 0, signal: null }, cp?.proc.output().slice(-4000));
    });

    test('tokens and roles: who am I, unauthenticated, permission denied', async () => {
      assert.deepEqual(await admin.call('WhoAmI'), { token_name: 'ops', role: 'admin' });
      assert.deepEqual(await pricing.call('WhoAmI'), { token_name: 'pricebot', role: 'pricing' });
      assert.deepEqual(await reader.call('WhoAmI'), { token_name: 'auditor', role: 'reader' });
      const msg = /^missing or unknown admin token: pass 'authorization: Bearer <token>'$/;
      await rejects(assert, cp.as(null).call('WhoAmI'), 'UNAUTHENTICATED', msg);
      await rejects(assert, cp.as('tg-not-a-real-token-00000000').call('ListAccounts'), 'UNAUTHENTICATED', msg);
      await rejects(assert, reader.call('CreateKey', { key: { account_id: 'x' } }), 'PERMISSION_DENIED',
        /^permission denied: token role 'reader' cannot create keys$/);
      await rejects(assert, pricing.call('CreateAccount', { account: ACCOUNT('p-should-fail') }), 'PERMISSION_DENIED',
        /^permission denied: token role 'pricing' cannot create accounts$/);
      await rejects(assert, reader.call('PublishPriceCard', { card: { id: 'x' } }), 'PERMISSION_DENIED',
        /token role 'reader' cannot publish price cards/);
      // pricing may publish prices (its whole purpose); readers may read
      const card = await pricing.call('PublishPriceCard', { card: { id: 'roles-card', currency: 'USD',
        entries: [{ model: 'gpt-4o', input_per_mtok_nano: '2500000000' }] } });
      assert.equal(card.version, '1');
      assert.equal(card.published_by.token_name, 'pricebot');
      assert.equal((await reader.call('GetPriceCard', { id: 'roles-card' })).version, '1');
    });

    test('accounts: create with balances at zero, get, validate, update with revisions, delete', async () => {
      const a = await admin.call('CreateAccount', { account: ACCOUNT('acme') });
      assert.match(a.id, /^acc_[0-9A-Z]{26}$/);
      assert.ok(Number(a.revision) > 0);
      assert.equal(a.status, 'OBJECT_STATUS_ACTIVE');
      const bal = await reader.call('GetBalances', { account_id: a.id });
      assert.deepEqual(bal.balances.map((b) => [b.bucket, b.currency, b.balance_nano]).sort(),
        [['credit', 'USD', '0'], ['wallet', 'USD', '0']]);
      const got = await reader.call('GetAccount', { id: a.id });
      assert.equal(got.name, 'acme');
      assert.equal(got.revision, a.revision);

      await rejects(assert, admin.call('CreateAccount', { account: ACCOUNT('acme') }), 'ALREADY_EXISTS',
        /^account\.name: an account named 'acme' already exists$/);
      await rejects(assert, admin.call('CreateAccount', { account: { name: 'bad', buckets: [
        { name: 'credit', currency: 'USD' }, { name: 'wallet', currency: 'US Dollars' }] } }),
      'INVALID_ARGUMENT', /^account\.buckets\[1\]\.currency: must be a 3-letter code or a unit name$/);
      await rejects(assert, admin.call('CreateAccount', { account: { name: 'nobuckets' } }),
        'INVALID_ARGUMENT', /^account\.buckets: at least one bucket is required$/);
      await rejects(assert, admin.call('GetAccount', { id: 'acc_missing' }), 'NOT_FOUND', /account 'acc_missing' not found/);

      // update only the name (mask), with the right revision, then a stale one
      const u = await admin.call('UpdateAccount', { account: { id: a.id, name: 'acme-corp', buckets: [] },
        update_mask: ['name'], expected_revision: a.revision });
      assert.equal(u.name, 'acme-corp');
      assert.equal(u.buckets.length, 2, 'buckets untouched: not in the mask');
      assert.ok(Number(u.revision) > Number(a.revision));
      await rejects(assert, admin.call('UpdateAccount', { account: { id: a.id, name: 'again' },
        update_mask: ['name'], expected_revision: a.revision }), 'FAILED_PRECONDITION',
      new RegExp(`account '${a.id}' is at revision ${u.revision}, not the expected ${a.revision}`));
      await rejects(assert, admin.call('UpdateAccount', { account: { id: a.id }, update_mask: ['nope'] }),
        'INVALID_ARGUMENT', /^update_mask\[0\]: no field 'nope' in account$/);
      // the old name is free again, the new one taken
      const again = await admin.call('CreateAccount', { account: ACCOUNT('acme') });
      await rejects(assert, admin.call('CreateAccount', { account: ACCOUNT('acme-corp') }), 'ALREADY_EXISTS');
      // add a bucket: it gets a balance record
      await admin.call('UpdateAccount', { account: { id: a.id, buckets: [...u.buckets, { name: 'promo', currency: 'credits' }] },
        update_mask: ['buckets'] });
      const bal2 = await reader.call('GetBalances', { account_id: a.id });
      assert.deepEqual(bal2.balances.map((b) => b.bucket).sort(), ['credit', 'promo', 'wallet']);

      const d = await admin.call('DeleteAccount', { id: again.id });
      assert.equal(d.deleted, true);
      await rejects(assert, reader.call('GetAccount', { id: again.id }), 'NOT_FOUND');
      await rejects(assert, reader.call('GetBalances', { account_id: again.id }), 'NOT_FOUND');
    });

    test('projects and keys: secret shown once, only hash+prefix kept, status changes', async () => {
      const acct = await admin.call('CreateAccount', { account: ACCOUNT('keys-co') });
      const other = await admin.call('CreateAccount', { account: ACCOUNT('other-co') });
      const prj = await admin.call('CreateProject', { project: { account_id: acct.id, name: 'web' } });
      assert.match(prj.id, /^prj_/);
      await rejects(assert, admin.call('CreateProject', { project: { account_id: acct.id, name: 'web' } }),
        'ALREADY_EXISTS', /account '.*' already has a project named 'web'/);
      await rejects(assert, admin.call('CreateProject', { project: { account_id: 'acc_nope', name: 'x' } }),
        'INVALID_ARGUMENT', /^project\.account_id: no account 'acc_nope'$/);

      const k = await admin.call('CreateKey', { key: { account_id: acct.id, project_id: prj.id, name: 'ci',
        model_allowlist: ['gpt-4o*'], ip_allowlist: ['10.0.0.0/8', '::1'] } });
      assert.match(k.secret, /^tg-[0-9A-Za-z]{43}$/);
      assert.ok(k.secret.startsWith(k.key.display_prefix));
      assert.equal(k.key.display_prefix.length, 12);
      assert.equal(k.key.secret_sha256.length, 0, 'the hash is not handed out');
      assert.equal(k.key.status, 'KEY_STATUS_ACTIVE');
      const got = await reader.call('GetKey', { id: k.key.id });
      assert.equal(got.display_prefix, k.key.display_prefix);
      assert.ok(!JSON.stringify(got).includes(k.secret.slice(12)), 'GetKey never shows the secret');
      const list = await reader.call('ListKeys', { account_id: acct.id });
      assert.deepEqual(list.keys.map((x) => x.id), [k.key.id]);
      assert.ok(!JSON.stringify(list).includes(k.secret.slice(12)));
      assert.equal((await reader.call('ListKeys', { project_id: 'prj_none' })).keys.length, 0);

      await rejects(assert, admin.call('CreateKey', { key: { account_id: other.id, project_id: prj.id } }),
        'INVALID_ARGUMENT', new RegExp(`^key\\.project_id: project '${prj.id}' belongs to account '${acct.id}', not '${other.id}'$`));
      await rejects(assert, admin.call('CreateKey', { key: { account_id: acct.id, ip_allowlist: ['10.0.0.0/33'] } }),
        'INVALID_ARGUMENT', /^key\.ip_allowlist\[0\]: '10\.0\.0\.0\/33' is not an IPv4 or IPv6 CIDR$/);

      const paused = await admin.call('SetKeyStatus', { id: k.key.id, status: 'KEY_STATUS_PAUSED', reason: 'over budget' });
      assert.equal(paused.status, 'KEY_STATUS_PAUSED');
      assert.equal(paused.status_reason, 'over budget');
      assert.equal((await admin.call('SetKeyStatus', { id: k.key.id, status: 'KEY_STATUS_ACTIVE' })).status, 'KEY_STATUS_ACTIVE');
      assert.equal((await admin.call('SetKeyStatus', { id: k.key.id, status: 'KEY_STATUS_REVOKED', reason: 'leaked' })).status, 'KEY_STATUS_REVOKED');
      await rejects(assert, admin.call('SetKeyStatus', { id: k.key.id, status: 'KEY_STATUS_ACTIVE' }),
        'FAILED_PRECONDITION', /revocation is permanent/);

      // references: the project cannot go while it has keys
      await rejects(assert, admin.call('DeleteProject', { id: prj.id }), 'FAILED_PRECONDITION', /still has 1 key/);
      await rejects(assert, admin.call('DeleteAccount', { id: acct.id }), 'FAILED_PRECONDITION', /still has 1 project/);
      assert.equal((await admin.call('DeleteKey', { id: k.key.id })).deleted, true);
      assert.equal((await admin.call('DeleteProject', { id: prj.id })).deleted, true);
      assert.equal((await admin.call('DeleteAccount', { id: acct.id })).deleted, true);
    });

    test('channels: credential write-only, routes check their channels', async () => {
      const secret = 'sk-upstream-very-secret-value';
      const ch = await admin.call('CreateChannel', { channel: CHANNEL('openai-main', { credential: secret }) });
      assert.equal(ch.credential, '');
      assert.equal(ch.has_credential, true);
      const got = await reader.call('GetChannel', { id: ch.id });
      assert.equal(got.credential, '');
      assert.equal(got.has_credential, true);
      const all = await reader.call('ListChannels', {});
      assert.ok(all.channels.some((c) => c.id === ch.id));
      assert.ok(!JSON.stringify(all).includes(secret));
      // an update without "credential" in the mask keeps it; naming it replaces it
      const u = await admin.call('UpdateChannel', { channel: { ...got, weight: 7, credential: '' } });
      assert.equal(u.weight, 7);
      assert.equal(u.has_credential, true);
      const cleared = await admin.call('UpdateChannel', { channel: { id: ch.id, credential: '' }, update_mask: ['credential'] });
      assert.equal(cleared.has_credential, false);
      await admin.call('UpdateChannel', { channel: { id: ch.id, credential: secret }, update_mask: ['credential'] });
      const audit = await reader.call('QueryAudit', { object_id: ch.id, page_size: 50 });
      assert.equal(audit.events.length, 4);
      assert.ok(!JSON.stringify(audit).includes(secret), 'the audit log never holds the credential');
      assert.match(audit.events[0].after_json, /"credential":"<redacted>"/);

      await rejects(assert, admin.call('CreateChannel', { channel: CHANNEL('bad', { base_url: 'ftp://x' }) }),
        'INVALID_ARGUMENT', /^channel\.base_url: must start with http:\/\/ or https:\/\/$/);
      await rejects(assert, admin.call('CreateChannel', { channel: CHANNEL('bad-host', { extra_headers: [{ name: 'x-a', value: '1' }, { name: 'Content-Length', value: '5' }] }) }),
        'INVALID_ARGUMENT', /^channel\.extra_headers\[1\]\.name: Content-Length is set by the gateway for each request; remove it$/);
      await rejects(assert, admin.call('CreateChannel', { channel: CHANNEL('openai-main') }), 'ALREADY_EXISTS');
      // provider types per vendor; a number no ProviderType has is refused naming the field
      for (const p of ['DEEPSEEK', 'QWEN', 'KIMI', 'GLM', 'GEMINI', 'OPENAI_COMPATIBLE']) {
        const v = await admin.call('CreateChannel', { channel: CHANNEL(`vendor-${p}`, { provider: `PROVIDER_TYPE_${p}` }) });
        assert.equal(v.provider, `PROVIDER_TYPE_${p}`);
      }
      await rejects(assert, admin.call('CreateChannel', { channel: CHANNEL('vendor-42', { provider: 42 }) }),
        'INVALID_ARGUMENT', /^channel\.provider: 42 is not a provider; use openai, anthropic, gemini, deepseek, qwen, kimi, glm or openai_compatible/);
      await rejects(assert, admin.call('CreateChannel', { channel: CHANNEL('vendor-none', { provider: 'PROVIDER_TYPE_UNSPECIFIED' }) }),
        'INVALID_ARGUMENT', /^channel\.provider: required; use openai, anthropic/);

      await rejects(assert, pricing.call('PutRoute', { route: { model: 'gpt-4o', tiers: [{ targets: [{ channel_id: 'x' }] }] } }),
        'INVALID_ARGUMENT', /^route\.tiers\[0\]\.targets\[0\]\.channel_id: no channel 'x'$/);
      const r = await pricing.call('PutRoute', { route: { model: 'gpt-4o', aliases: ['gpt-4o-latest'], encoding: 'o200k_base',
        tiers: [{ targets: [{ channel_id: ch.id, upstream_model: 'gpt-4o-2024-08-06' }] }] } });
      assert.ok(Number(r.revision) > 0);
      const r2 = await pricing.call('PutRoute', { route: { ...r, encoding: 'cl100k_base' }, expected_revision: r.revision });
      await rejects(assert, pricing.call('PutRoute', { route: r, expected_revision: r.revision }), 'FAILED_PRECONDITION');
      assert.equal((await reader.call('GetRoute', { id: 'gpt-4o' })).encoding, 'cl100k_base');
      assert.equal(r2.created_at_us, r.created_at_us);
      assert.deepEqual((await reader.call('ListRoutes', {})).routes.map((x) => x.model), ['gpt-4o']);
      await rejects(assert, admin.call('DeleteChannel', { id: ch.id }), 'FAILED_PRECONDITION',
        /is used by route 'gpt-4o'/);
      assert.equal((await pricing.call('DeleteRoute', { id: 'gpt-4o' })).deleted, true);
      assert.equal((await admin.call('DeleteChannel', { id: ch.id })).deleted, true);
    });

    test('price cards: every version kept, in effect by time, expected_version', async () => {
      const entries = (p) => [{ model: 'claude-*', route_type: 'ROUTE_TYPE_DIRECT', input_per_mtok_nano: String(p) }];
      const v1 = await pricing.call('PublishPriceCard', { card: { id: 'std', currency: 'USD', entries: entries(3e9), note: 'launch' } });
      const v2 = await pricing.call('PublishPriceCard', { card: { id: 'std', currency: 'USD', entries: entries(2e9) }, expected_version: '1' });
      assert.deepEqual([v1.version, v2.version], ['1', '2']);
      await rejects(assert, pricing.call('PublishPriceCard', { card: { id: 'std', currency: 'USD', entries: entries(1) }, expected_version: '1' }),
        'FAILED_PRECONDITION', /price card 'std' is at version 2, not the expected 1/);
      // a version scheduled an hour ahead is stored but not yet in effect
      const future = String((Date.now() + 3600e3) * 1000);
      const v3 = await pricing.call('PublishPriceCard', { card: { id: 'std', currency: 'USD', entries: entries(1e9), effective_at_us: future } });
      assert.equal(v3.version, '3');
      const now = await reader.call('GetPriceCard', { id: 'std' });
      assert.equal(now.version, '2');
      assert.equal(now.entries[0].input_per_mtok_nano, '2000000000');
      const old = await reader.call('GetPriceCard', { id: 'std', version: '1' });
      assert.equal(old.entries[0].input_per_mtok_nano, '3000000000');
      assert.equal(old.note, 'launch');
      const versions = await reader.call('ListPriceCards', { id: 'std' });
      assert.deepEqual(versions.cards.map((c) => c.version), ['1', '2', '3']);
      const current = await reader.call('ListPriceCards', {});
      assert.equal(current.cards.find((c) => c.id === 'std').version, '2');
      await rejects(assert, reader.call('GetPriceCard', { id: 'std', version: '9' }), 'NOT_FOUND', /has no version 9/);
      // pages of current cards: every card once, at its current version
      for (const id of ['pg-a', 'pg-b', 'pg-c'])
        for (let v = 0; v < 2; v++)
          await pricing.call('PublishPriceCard', { card: { id, currency: 'USD',
            entries: [{ model: `${id}-*`, input_per_mtok_nano: String(1000 + v) }] } });
      const cards = [];
      let token = '';
      for (let i = 0; i < 20; i++) {
        const p = await reader.call('ListPriceCards', { page_size: 2, page_token: token });
        assert.ok(p.cards.length <= 2);
        cards.push(...p.cards);
        token = p.next_page_token;
        if (!token) break;
      }
      const ids = cards.map((c) => c.id);
      assert.equal(new Set(ids).size, ids.length, 'no card twice');
      for (const id of ['pg-a', 'pg-b', 'pg-c', 'std']) assert.ok(ids.includes(id), id);
      for (const id of ['pg-a', 'pg-b', 'pg-c']) assert.equal(cards.find((c) => c.id === id).version, '2');
      await rejects(assert, pricing.call('PublishPriceCard', { card: { id: 'std', currency: 'USD', entries: [
        { model: 'a', input_per_mtok_nano: '-1' }] } }), 'INVALID_ARGUMENT',
        /^card\.entries\[0\]\.input_per_mtok_nano: -1 is outside 0\.\.1000000000000000 nano-units/);
    });

    test('price cards: only prices billing can apply, one card per model, unpriced routes named', async () => {
      // billing's limits at publish time, naming the entry and the field
      const ok = { model: 'lim-a', input_per_mtok_nano: '1' };
      await rejects(assert, pricing.call('PublishPriceCard', { card: { id: 'lim', currency: 'USD', entries: [ok,
        { model: 'lim-b' }, { model: 'lim-c', rate_ppm: '999999999999' }] } }), 'INVALID_ARGUMENT',
        /^card\.entries\[2\]\.rate_ppm: 999999999999 is outside 0\.\.1000000000 ppm/);
      await rejects(assert, pricing.call('PublishPriceCard', { card: { id: 'lim', currency: 'USD', entries: [
        { model: 'lim-a', output_per_mtok_nano: '9000000000000000000' }] } }), 'INVALID_ARGUMENT',
        /^card\.entries\[0\]\.output_per_mtok_nano: 9000000000000000000 is outside/);
      await rejects(assert, admin.call('CreateChannel', { channel: CHANNEL('lim-ch', { cost_rate_ppm: '1000000001' }) }),
        'INVALID_ARGUMENT', /^channel\.cost_rate_ppm: must be 0\.\.1000000000 ppm/);
      const edge = await pricing.call('PublishPriceCard', { card: { id: 'lim', currency: 'USD', entries: [
        { model: 'lim-a', per_request_nano: '1000000000000000', rate_ppm: '1000000000' }] } });
      assert.equal(edge.version, '1');
      // a second card of the same currency pricing the same model and route type is refused, naming the card
      await rejects(assert, pricing.call('PublishPriceCard', { card: { id: 'lim2', currency: 'USD', entries: [
        { model: 'lim-z' }, { model: 'lim-a' }] } }), 'FAILED_PRECONDITION',
        /^card\.entries\[1\]: model 'lim-a' \(route type any\) is already priced in USD by card 'lim' version 1/);
      // another currency, another route type, or after the other card dropped it: accepted
      await pricing.call('PublishPriceCard', { card: { id: 'lim-eur', currency: 'EUR', entries: [{ model: 'lim-a' }] } });
      await pricing.call('PublishPriceCard', { card: { id: 'lim2', currency: 'USD', entries: [
        { model: 'lim-a', route_type: 'ROUTE_TYPE_DIRECT' }] } });
      await pricing.call('PublishPriceCard', { card: { id: 'lim', currency: 'USD', entries: [{ model: 'lim-x' }] } });
      const moved = await pricing.call('PublishPriceCard', { card: { id: 'lim3', currency: 'USD', entries: [{ model: 'lim-a' }] } });
      assert.equal(moved.version, '1');
      // routed models no card prices: published anyway, named in the reply's warnings
      const ch = await admin.call('CreateChannel', { channel: CHANNEL('lim-route-ch') });
      const r = await pricing.call('PutRoute', { route: { model: 'lim-unpriced', tiers: [{ targets: [{ channel_id: ch.id }] }] } });
      assert.equal(r.warnings.length, 1);
      assert.match(r.warnings[0], /^route\.model: no price card in effect prices 'lim-unpriced': the agent refuses/);
      const priced = await pricing.call('PutRoute', { route: { model: 'lim-x', tiers: [{ targets: [{ channel_id: ch.id }] }] } });
      assert.deepEqual(priced.warnings, []);
      assert.deepEqual((await reader.call('GetRoute', { id: 'lim-unpriced' })).warnings, [], 'warnings are not stored');
      const dropped = await pricing.call('PublishPriceCard', { card: { id: 'lim', currency: 'USD', entries: [{ model: 'lim-y' }] } });
      assert.ok(dropped.warnings.some((w) => /^routed model 'lim-x' is priced by no card in effect once version 3 applies/.test(w)),
        JSON.stringify(dropped.warnings));
      assert.ok(dropped.warnings.some((w) => /'lim-unpriced'/.test(w)));
      assert.deepEqual((await reader.call('GetPriceCard', { id: 'lim' })).warnings, []);
      for (const m of ['lim-unpriced', 'lim-x']) await pricing.call('DeleteRoute', { id: m });
      await admin.call('DeleteChannel', { id: ch.id });
    });

    test('pagination visits every account exactly once', async () => {
      const made = [];
      for (let i = 0; i < 7; i++) made.push((await admin.call('CreateAccount', { account: ACCOUNT(`page-${i}`) })).id);
      const seen = [];
      let token = '';
      let pages = 0;
      do {
        const p = await reader.call('ListAccounts', { page_size: 3, page_token: token });
        assert.ok(p.accounts.length <= 3);
        seen.push(...p.accounts.map((a) => a.id));
        token = p.next_page_token;
        pages++;
      } while (token && pages < 50);
      for (const id of made) assert.equal(seen.filter((x) => x === id).length, 1, `${id} once`);
      assert.equal(new Set(seen).size, seen.length);
      await rejects(assert, reader.call('ListAccounts', { page_token: 'garbage' }), 'INVALID_ARGUMENT', /page_token/);
    });

    test('audit log: who, what, before/after, filters and pages', async () => {
      const a = await admin.call('CreateAccount', { account: ACCOUNT('audited') });
      await admin.call('UpdateAccount', { account: { id: a.id, name: 'audited-2' }, update_mask: ['name'] });
      const ev = await reader.call('QueryAudit', { object_type: 'account', object_id: a.id });
      assert.deepEqual(ev.events.map((e) => e.method), ['CreateAccount', 'UpdateAccount']);
      const [c, u] = ev.events;
      assert.equal(c.actor.token_name, 'ops');
      assert.equal(c.actor.role, 'admin');
      assert.match(c.actor.peer, /127\.0\.0\.1/);
      assert.equal(c.before_json, '');
      assert.equal(JSON.parse(c.after_json).name, 'audited');
      assert.equal(JSON.parse(u.before_json).name, 'audited');
      assert.equal(JSON.parse(u.after_json).name, 'audited-2');
      assert.ok(Number(u.seq) > Number(c.seq));
      assert.ok(Number(u.revision) > Number(c.revision));
      const got = await reader.call('GetAccount', { id: a.id });
      assert.equal(got.revision, u.revision, 'the audit revision is the revision of the change');
      // by token: the pricing bot's changes only
      const byBot = await reader.call('QueryAudit', { token_name: 'pricebot', page_size: 1000 });
      assert.ok(byBot.events.length >= 1);
      assert.ok(byBot.events.every((e) => e.actor.token_name === 'pricebot'));
      // paging the whole log gives strictly increasing sequence numbers
      const seqs = [];
      let token = '';
      for (let i = 0; i < 100; i++) {
        const p = await reader.call('QueryAudit', { page_size: 4, page_token: token });
        seqs.push(...p.events.map((e) => Number(e.seq)));
        token = p.next_page_token;
        if (!token) break;
      }
      assert.ok(seqs.length >= 10);
      for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1);
      // reads are not audited; failed writes are not either
      const before = seqs.length;
      await rejects(assert, admin.call('CreateAccount', { account: ACCOUNT('audited-2') }), 'ALREADY_EXISTS');
      const after2 = await reader.call('QueryAudit', { page_size: 1000 });
      assert.equal(after2.events.length, before);
    });

    test('concurrent writers: all distinct creates land, one of a duplicate name wins, audit stays gapless', async () => {
      const clients = Array.from({ length: 8 }, () => cp.as('admin'));
      const made = await Promise.all(Array.from({ length: 24 }, (_, i) =>
        clients[i % 8].call('CreateAccount', { account: ACCOUNT(`conc-${i}`) })));
      assert.equal(new Set(made.map((a) => a.id)).size, 24);
      const same = await Promise.allSettled(clients.map((c) => c.call('CreateAccount', { account: ACCOUNT('contested') })));
      assert.equal(same.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one create of a name succeeds');
      for (const r of same.filter((x) => x.status === 'rejected')) assert.equal(r.reason.code, 6 /* ALREADY_EXISTS */);
      const log = await reader.call('QueryAudit', { page_size: 1000 });
      const seqs = log.events.map((e) => Number(e.seq));
      for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, 'no gaps, no duplicates');
      for (const a of made) assert.ok(log.events.some((e) => e.object_id === a.id && e.method === 'CreateAccount'));
    });

    test('policy and run budgets round-trip with validation', async () => {
      const p = await admin.call('PutPolicy', { policy: { trusted_proxies: ['10.0.0.0/8'], max_request_bytes: '1048576' } });
      assert.ok(Number(p.revision) > 0);
      assert.deepEqual((await reader.call('GetPolicy', {})).trusted_proxies, ['10.0.0.0/8']);
      await rejects(assert, admin.call('PutPolicy', { policy: { trusted_proxies: ['nope'] } }), 'INVALID_ARGUMENT',
        /^policy\.trusted_proxies\[0\]: 'nope' is not an IPv4 or IPv6 CIDR$/);
      const a = await admin.call('CreateAccount', { account: ACCOUNT('runner') });
      const b = await admin.call('PutRunBudget', { budget: { run_id: 'task-42', account_id: a.id, max_spend_nano: '5000000000', currency: 'USD' } });
      assert.equal(b.run_id, 'task-42');
      assert.equal((await reader.call('GetRunBudget', { id: 'task-42' })).max_spend_nano, '5000000000');
      await rejects(assert, admin.call('PutRunBudget', { budget: { run_id: 'task-43', account_id: 'acc_x' } }),
        'INVALID_ARGUMENT', /^budget\.account_id: no account 'acc_x'$/);
    });

    test('health, readiness and metrics on the HTTP port', async () => {
      const h = await fetch(`http://${cp.httpAddr}/healthz`);
      assert.equal(h.status, 200);
      const r = await fetch(`http://${cp.httpAddr}/readyz`);
      assert.equal(r.status, 200);
      const m = await (await fetch(`http://${cp.httpAddr}/metrics`)).text();
      const calls = Number(/^tollgate_cp_admin_calls_total (\d+)$/m.exec(m)[1]);
      assert.ok(calls > 20, `admin calls counted: ${calls}`);
      assert.match(m, /^# TYPE tollgate_cp_store_revision gauge$/m);
      assert.match(m, /^tollgate_cp_is_leader 1$/m);
    });
  });
}

test('SIGTERM shuts down gracefully with exit code 0 and data survives a restart', async () => {
  const cp = await startCp();
  const admin = cp.as('admin');
  const a = await admin.call('CreateAccount', { account: ACCOUNT('durable') });
  const exit = await cp.stop('SIGTERM');
  assert.deepEqual(exit, { code: 0, signal: null }, cp.proc.output());
  assert.match(cp.proc.output(), /"msg":"stopped"/);
  const cp2 = await startCp({ dataDir: cp.dataDir });
  try {
    assert.equal((await cp2.as('reader').call('GetAccount', { id: a.id })).name, 'durable');
  } finally {
    assert.equal((await cp2.stop('SIGINT')).code, 0);
  }
});

test('SIGHUP rotates admin tokens; a broken file keeps the old ones', async () => {
  const cp = await startCp();
  try {
    // the test's token file is mode 0644 with literal tokens: worth a warning
    assert.match(cp.proc.output(), /holds literal tokens and is readable by group or others/);
    const fresh = 'tg-rotated-token-dddddddddddddddd';
    writeFileSync(cp.tokensFile, `ops admin ${TOKENS.admin}\nrotated reader ${fresh}\n`);
    cp.proc.child.kill('SIGHUP');
    await until(() => /SIGHUP: reloaded 2 admin token/.test(cp.proc.output()), { what: 'the reload' });
    assert.deepEqual(await cp.as(fresh).call('WhoAmI'), { token_name: 'rotated', role: 'reader' });
    await rejects(assert, cp.as('reader').call('WhoAmI'), 'UNAUTHENTICATED');
    writeFileSync(cp.tokensFile, 'ops admin\n');
    cp.proc.child.kill('SIGHUP');
    await until(() => /SIGHUP: .*line 1: expected 'name role token'.*previous tokens stay/.test(cp.proc.output()),
      { what: 'the refused reload' });
    assert.deepEqual(await cp.as(fresh).call('WhoAmI'), { token_name: 'rotated', role: 'reader' });
  } finally {
    assert.equal((await cp.stop('SIGTERM')).code, 0);
  }
});
