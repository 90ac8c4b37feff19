// Alerts: a real tollgate-cp (on LMDB, and on a real etcd), usage reported
// by a FakeAgent (signed batches, settled for real), a local webhook
// receiver that checks every signature, and a real tollgate-agent that must
// refuse a key an alert rule paused. What an operator sees: bad rules are
// refused naming the field; a key's 50/80/100 % thresholds fire once each
// per window; a webhook that fails twice gets the alert on the third try and
// a receiver that dedups by the idempotency id sees each alert once;
// WatchAlerts resumes after an alert id; spend velocity per account, a
// channel's error rate, a key's fallback rate and a failed request that
// consumed tokens each fire once; a token-velocity rule pauses a key and the
// agent answers 403 key_paused naming the rule within about a second.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import crypto from 'node:crypto';
import { startAgent } from '../../agent/testing/agent.mjs';
import { startCp, startEtcd, seed, waitLeader, costOf, FakeAgent, ENROLL_TOKEN, grpc } from './cp_agent_lib.mjs';
import { until } from './lib/proc.mjs';

const TOKENS = { input_tokens: 1000, output_tokens: 500 };
const UNIT = costOf(TOKENS); // what one reported record costs

// A webhook receiver on 127.0.0.1: answers 500 to the first `failFirst`
// deliveries of each alert, checks each signature with the secret, keeps what it accepted
// by idempotency id (a duplicate has no effect).
async function receiver(failFirst = 0) {
  const r = { secret: '', hits: 0, bad: [], accepted: new Map(), deliveries: [] };
  r.server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      r.hits++;
      const sig = req.headers['tollgate-signature'] || '';
      const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(sig);
      const want = m && crypto.createHmac('sha256', r.secret).update(`${m[1]}.${body}`).digest('hex');
      if (!m || want !== m[2] || Math.abs(Date.now() / 1000 - Number(m[1])) > 300) {
        r.bad.push({ sig, body });
        res.writeHead(400).end();
        return;
      }
      const id = req.headers['idempotency-key'];
      r.deliveries.push({ id, at: Date.now() });
      if (r.deliveries.filter((d) => d.id === id).length <= failFirst) {
        res.writeHead(500).end('try later');
        return;
      }
      if (!r.accepted.has(id)) r.accepted.set(id, JSON.parse(body));
      res.writeHead(200).end('ok');
    });
  });
  await new Promise((resolve) => r.server.listen(0, '127.0.0.1', resolve));
  r.url = `http://127.0.0.1:${r.server.address().port}/hook`;
  return r;
}

for (const backend of ['lmdb', 'etcd']) {
  describe(`alerts on ${backend}`, () => {
    let etcd, cp, ids, fa, hook;

    before(async () => {
      if (backend === 'etcd') etcd = await startEtcd();
      cp = await startCp(etcd ? { store: `etcd:${etcd.url}` } : {});
      ids = await seed(cp);
      await waitLeader(cp);
      fa = new FakeAgent(cp, 'edge-alerts');
      await fa.enroll();
      hook = await receiver(2);
    });

    after(async () => {
      hook?.server.close();
      await cp?.stop();
      await etcd?.proc.stop('SIGKILL');
    });

    async function newKey(name, limits = []) {
      const r = await cp.adminCall('CreateKey', { key: { account_id: ids.account, name, spend_limits: limits } });
      return r;
    }

    async function report(keyId, n, tokens = TOKENS) {
      const recs = [];
      for (let i = 0; i < n; i++) {
        const r = fa.record(ids, { tokens });
        r.key_id = keyId;
        r.project_id = '';
        recs.push(r);
      }
      await fa.report(fa.signed(recs));
    }

    test(`${backend}: bad rules are refused naming the field`, async () => {
      const k = await newKey('bad-input');
      const base = { scope: 'key', scope_id: k.key.id, kind: 'ALERT_KIND_SPEND_THRESHOLD', thresholds_pct: [50] };
      const cases = [
        [{ ...base, webhooks: [{ url: 'ftp://example.com/x' }] }, /rule\.webhooks\[0\]\.url/],
        [{ ...base, webhooks: [{ url: 'file:///etc/passwd' }] }, /rule\.webhooks\[0\]\.url/],
        [{ ...base, thresholds_pct: [50, 150] }, /rule\.thresholds_pct\[1\]/],
        [{ ...base, scope: 'galaxy' }, /rule\.scope: unknown scope 'galaxy'/],
        [{ ...base, scope_id: 'key_nope' }, /rule\.scope_id: no key 'key_nope'/],
        [{ ...base, kind: 'ALERT_KIND_CHANNEL_ERROR_RATE', thresholds_pct: [], rate_pct: 10 }, /rule\.scope/],
        [{ scope: 'account', scope_id: ids.account, kind: 'ALERT_KIND_SPEND_VELOCITY', velocity_limit: '5',
          action: 'ALERT_ACTION_PAUSE_KEY' }, /rule\.action: pause_key needs a key scope/],
      ];
      for (const [rule, re] of cases) {
        await assert.rejects(cp.adminCall('CreateAlertRule', { rule }),
          (e) => e.code === grpc.status.INVALID_ARGUMENT && re.test(e.details), JSON.stringify(rule));
      }
      // an update is validated the same way
      const ok = await cp.adminCall('CreateAlertRule', { rule: base });
      await assert.rejects(cp.adminCall('UpdateAlertRule', { rule: { id: ok.rule.id, thresholds_pct: [101] },
        update_mask: ['thresholds_pct'] }),
      (e) => e.code === grpc.status.INVALID_ARGUMENT && /rule\.thresholds_pct\[0\]/.test(e.details));
      await cp.adminCall('DeleteAlertRule', { id: ok.rule.id });
      await assert.rejects(cp.adminCall('GetAlertRule', { id: ok.rule.id }), (e) => e.code === grpc.status.NOT_FOUND);
    });

    test(`${backend}: 50/80/100 % of a key's day limit fire once each, webhooks signed and retried`, async () => {
      const k = await newKey('thresholds', [{ window: 'LIMIT_WINDOW_DAY', limit_nano: String(UNIT * 10n), currency: 'USD' }]);
      const created = await cp.adminCall('CreateAlertRule', { rule: { name: 'day budget', scope: 'key',
        scope_id: k.key.id, kind: 'ALERT_KIND_SPEND_THRESHOLD', thresholds_pct: [50, 80, 100],
        webhooks: [{ url: hook.url }] } });
      assert.match(created.webhook_secret, /^whsec_/);
      assert.equal(created.rule.webhook_secret, '', 'the secret is shown only once');
      assert.equal(created.rule.account_id, ids.account);
      hook.secret = created.webhook_secret;
      const got = await cp.adminCall('GetAlertRule', { id: created.rule.id });
      assert.equal(got.webhook_secret, '');
      const listed = await cp.adminCall('ListAlertRules', { account_id: ids.account });
      assert.ok(listed.rules.some((r) => r.id === created.rule.id));

      const alerts = async () => (await cp.adminCall('ListAlerts', { rule_id: created.rule.id })).alerts;
      // the engine learns that rules exist at its next pass (at most 1 s):
      // a record settled before that is only seen by the 10 s sweep
      // (docs/SPEND.md, "Alerts"); under load that raced the first report
      await new Promise((r) => setTimeout(r, 1200));
      await report(k.key.id, 6); // 60 %
      await until(async () => (await alerts()).length === 1, { timeoutMs: 5000, what: 'the 50 % alert' });
      await report(k.key.id, 2); // 80 %
      await until(async () => (await alerts()).length === 2, { timeoutMs: 5000, what: 'the 80 % alert' });
      await report(k.key.id, 1); // 90 %: nothing new
      await new Promise((r) => setTimeout(r, 600));
      assert.equal((await alerts()).length, 2);
      await report(k.key.id, 1); // 100 %
      await until(async () => (await alerts()).length === 3, { timeoutMs: 5000, what: 'the 100 % alert' });
      await report(k.key.id, 1); // 110 %: every threshold already fired in this window
      await new Promise((r) => setTimeout(r, 600));
      const all = await alerts();
      assert.deepEqual(all.map((a) => a.threshold_pct), [50, 80, 100]);
      for (const a of all) {
        assert.match(a.id, /^alt_\d{16}$/);
        assert.equal(a.kind, 'ALERT_KIND_SPEND_THRESHOLD');
        assert.equal(a.limit_nano, String(UNIT * 10n));
        assert.equal(a.currency, 'USD');
        assert.match(a.limit_scope, new RegExp(`^key/${k.key.id}/day/`));
      }
      assert.equal(all[2].spent_nano, String(UNIT * 10n));

      // the receiver failed twice, then took each alert once
      await until(() => hook.accepted.size === 3, { timeoutMs: 15000, what: 'three alerts delivered' });
      assert.deepEqual(hook.bad, [], 'every signature checks');
      assert.deepEqual([...hook.accepted.keys()].sort(), all.map((a) => a.id).sort());
      for (const a of all) {
        const tries = hook.deliveries.filter((d) => d.id === a.id);
        assert.equal(tries.length, 3, `${a.id}: two failures, then one success`);
        assert.ok(tries[1].at - tries[0].at >= 400 && tries[2].at - tries[1].at >= 900, 'with backoff');
      }
      assert.equal(hook.accepted.get(all[0].id).rule_id, created.rule.id);
      const rule = await cp.adminCall('GetAlertRule', { id: created.rule.id });
      assert.equal(rule.webhooks[0].status, 'WEBHOOK_STATUS_OK');

      // the audit trail has each alert
      const audit = await cp.adminCall('QueryAudit', { object_type: 'alert', page_size: 100 });
      for (const a of all) assert.ok(audit.events.some((e) => e.object_id === a.id && e.method === 'RaiseAlert'));

      // WatchAlerts resumes after an alert id
      const md = new grpc.Metadata();
      md.set('authorization', `Bearer ${'tg-admin-e2e-token-0123456789'}`);
      const seen = [];
      const s = cp.admin.WatchAlerts({ after_id: all[0].id, rule_id: created.rule.id }, md);
      s.on('data', (a) => seen.push(a.id));
      s.on('error', () => {});
      await until(() => seen.length >= 2, { timeoutMs: 5000, what: 'the watch to replay after the first alert' });
      assert.deepEqual(seen, [all[1].id, all[2].id]);
      s.cancel();
      await assert.rejects(cp.adminCall('ListAlerts', { after_id: 'nope' }),
        (e) => e.code === grpc.status.INVALID_ARGUMENT && /after_id/.test(e.details));
    });

    test(`${backend}: a threshold on an account-wide limit counts every key of the account`, async () => {
      const acct = await cp.adminCall('CreateAccount', { account: { name: `acct-thr-${backend}`,
        billing_mode: 'BILLING_MODE_PREPAID', buckets: [{ name: 'credit', currency: 'USD' }, { name: 'wallet', currency: 'USD' }],
        spend_limits: [{ window: 'LIMIT_WINDOW_MONTH', limit_nano: String(UNIT * 4n), currency: 'USD' }] } });
      await cp.adminCall('TopUp', { account_id: acct.id, bucket: 'wallet', amount_nano: String(UNIT * 100n),
        currency: 'USD', idempotency_key: `thr-${backend}`, reason: 'e2e' });
      const keys = [];
      for (const n of ['a', 'b']) keys.push((await cp.adminCall('CreateKey', { key: { account_id: acct.id, name: `thr-${n}` } })).key.id);
      const created = await cp.adminCall('CreateAlertRule', { rule: { scope: 'account', scope_id: acct.id,
        kind: 'ALERT_KIND_SPEND_THRESHOLD', thresholds_pct: [50] } });
      await new Promise((r) => setTimeout(r, 1200)); // the engine learns that rules exist
      const alerts = async () => (await cp.adminCall('ListAlerts', { rule_id: created.rule.id })).alerts;
      const mine = { ...ids, account: acct.id };
      const send = async (keyId) => {
        const r = fa.record(mine);
        r.key_id = keyId;
        r.project_id = '';
        await fa.report(fa.signed([r]));
      };
      await send(keys[0]); // 25 %
      await new Promise((r) => setTimeout(r, 600));
      assert.equal((await alerts()).length, 0, 'one key alone is under the threshold');
      await send(keys[1]); // 50 %: the other key's spend counts too
      await until(async () => (await alerts()).length === 1, { timeoutMs: 5000, what: 'the account\'s 50 % alert' });
      const [a] = await alerts();
      assert.match(a.limit_scope, new RegExp(`^account/${acct.id}/month/`));
      assert.equal(a.spent_nano, String(UNIT * 2n));
    });

    test(`${backend}: spend velocity per account, channel error rate, fallback rate, failed-but-consumed`, async () => {
      // records shaped as a real agent writes them: ERROR_CLASS_NONE (not
      // unset) on successes, an attempt per channel tried
      const acct = await cp.adminCall('CreateAccount', { account: { name: `velo-${backend}`, billing_mode: 'BILLING_MODE_PREPAID',
        buckets: [{ name: 'credit', currency: 'USD' }, { name: 'wallet', currency: 'USD' }] } });
      await cp.adminCall('TopUp', { account_id: acct.id, bucket: 'wallet', amount_nano: String(100n * 1000000000n),
        currency: 'USD', idempotency_key: `velo-${backend}`, reason: 'e2e' });
      const vk = await cp.adminCall('CreateKey', { key: { account_id: acct.id, name: 'velo' } });
      const flaky = await cp.adminCall('CreateChannel', { channel: { name: `flaky-${backend}`, provider: 'PROVIDER_TYPE_OPENAI',
        base_url: 'http://127.0.0.1:9/v1', route_type: 'ROUTE_TYPE_POOLED', credential: 'sk-flaky' } });
      const fk = await newKey('fallbacks');
      const wk = await newKey('wasted');
      const mk = async (rule) => (await cp.adminCall('CreateAlertRule', { rule })).rule;
      const velo = await mk({ name: 'account spend', scope: 'account', scope_id: acct.id, kind: 'ALERT_KIND_SPEND_VELOCITY',
        velocity_limit: String(UNIT * 2n), window_s: 60 });
      const errs = await mk({ name: 'flaky errors', scope: 'channel', scope_id: flaky.id, kind: 'ALERT_KIND_CHANNEL_ERROR_RATE',
        rate_pct: 50, min_requests: 4, window_s: 60 });
      const fbk = await mk({ name: 'fallbacks', scope: 'key', scope_id: fk.key.id, kind: 'ALERT_KIND_FALLBACK_RATE',
        rate_pct: 40, min_requests: 5, window_s: 60 });
      const wasted = await mk({ name: 'wasted', scope: 'key', scope_id: wk.key.id, kind: 'ALERT_KIND_FAILED_WITH_USAGE' });
      await new Promise((r) => setTimeout(r, 1200)); // the engine learns that rules exist
      const alerts = async (rule) => (await cp.adminCall('ListAlerts', { rule_id: rule.id })).alerts;
      const ok = { http_status: 200, error_class: 'ERROR_CLASS_NONE', decision: 'ATTEMPT_DECISION_FINAL' };
      const rec = (keyId, extra = {}) => ({ ...fa.record(ids), key_id: keyId, project_id: '', error_class: 'ERROR_CLASS_NONE',
        attempts: [{ index: 0, channel_id: ids.channel, ...ok }], ...extra });
      // a request that failed on the flaky channel, then fell back
      const fellBack = () => rec(fk.key.id, { fallback_used: true, attempts: [
        { index: 0, channel_id: flaky.id, http_status: 500, error_class: 'ERROR_CLASS_UPSTREAM_5XX', decision: 'ATTEMPT_DECISION_FALLBACK_TIER' },
        { index: 1, channel_id: ids.channel, tier: 1, ...ok }] });
      const servedByFlaky = () => rec(fk.key.id, { channel_id: flaky.id, attempts: [{ index: 0, channel_id: flaky.id, ...ok }] });

      // spend velocity of an account: 2 units in the minute is the limit, 3 pass it
      const vrec = () => ({ ...rec(vk.key.id), account_id: acct.id });
      await fa.report(fa.signed([vrec(), vrec()]));
      // error rate 1 of 3 (under min_requests), fallbacks 1 of 3 (under min_requests)
      await fa.report(fa.signed([servedByFlaky(), servedByFlaky(), fellBack()]));
      // a failed request with no usage: nothing consumed, no alert
      await fa.report(fa.signed([rec(wk.key.id, { client_status: 502, error_class: 'ERROR_CLASS_UPSTREAM_5XX', usage: {},
        cost_nano: 0, channel_id: '', bucket: '', attempts: [{ index: 0, channel_id: ids.channel, http_status: 502,
          error_class: 'ERROR_CLASS_UPSTREAM_5XX', decision: 'ATTEMPT_DECISION_GIVE_UP' }] })]));
      await new Promise((r) => setTimeout(r, 700));
      for (const r of [velo, errs, fbk, wasted]) assert.deepEqual(await alerts(r), [], `${r.name}: nothing yet`);
      // successes as real agents write them are not failures
      await fa.report(fa.signed([rec(wk.key.id), rec(wk.key.id)]));

      await fa.report(fa.signed([vrec()]));
      await fa.report(fa.signed([fellBack(), fellBack()])); // errors 3 of 5 on flaky, fallbacks 3 of 5 for the key
      const wasteRec = rec(wk.key.id, { client_status: 502, error_class: 'ERROR_CLASS_STREAM_CUT', finish_reason: 'error' });
      const wasteBatch = fa.signed([wasteRec]);
      await fa.report(wasteBatch);
      await fa.report(wasteBatch); // resent: settled once, alerted once

      const [v] = await until(async () => { const a = await alerts(velo); return a.length ? a : null; },
        { timeoutMs: 5000, what: 'the spend velocity alert' });
      assert.equal(v.kind, 'ALERT_KIND_SPEND_VELOCITY');
      assert.equal(v.account_id, acct.id);
      assert.equal(v.observed, String(UNIT * 3n));
      assert.equal(v.limit, String(UNIT * 2n));
      const [e] = await until(async () => { const a = await alerts(errs); return a.length ? a : null; },
        { timeoutMs: 5000, what: 'the channel error rate alert' });
      assert.equal(e.kind, 'ALERT_KIND_CHANNEL_ERROR_RATE');
      assert.equal(e.observed, '60');
      assert.match(e.message, /error rate 60% \(3 of 5\)/);
      const [f] = await until(async () => { const a = await alerts(fbk); return a.length ? a : null; },
        { timeoutMs: 5000, what: 'the fallback rate alert' });
      assert.equal(f.kind, 'ALERT_KIND_FALLBACK_RATE');
      assert.equal(f.observed, '60');
      assert.match(f.message, /fallback rate 60% \(3 of 5\)/);
      const [w] = await until(async () => { const a = await alerts(wasted); return a.length ? a : null; },
        { timeoutMs: 5000, what: 'the failed-but-consumed alert' });
      assert.equal(w.kind, 'ALERT_KIND_FAILED_WITH_USAGE');
      assert.equal(w.record_id, wasteRec.record_id);
      assert.equal(w.observed, String(TOKENS.input_tokens + TOKENS.output_tokens));
      assert.equal(w.spent_nano, String(UNIT));
      await new Promise((r) => setTimeout(r, 700));
      // each once: in their period, per record
      for (const r of [velo, errs, fbk, wasted]) assert.equal((await alerts(r)).length, 1, r.name);
    });

    test(`${backend}: a token-velocity rule pauses the key and a real agent refuses it within about a second`, async () => {
      const agent = await startAgent(null, { noSnapshot: true,
        args: ['--cp', `127.0.0.1:${cp.port}`, '--enroll-token', ENROLL_TOKEN] });
      try {
        await until(async () => (await fetch(`${agent.url}/readyz`)).status === 200,
          { timeoutMs: 15000, what: 'the agent to receive its snapshot' });
        const k = await newKey('runaway');
        const rule = await cp.adminCall('CreateAlertRule', { rule: { name: 'runaway', scope: 'key', scope_id: k.key.id,
          kind: 'ALERT_KIND_TOKEN_VELOCITY', velocity_limit: '2000', window_s: 60, action: 'ALERT_ACTION_PAUSE_KEY' } });
        const ask = () => fetch(`${agent.base}/chat/completions`, { method: 'POST',
          headers: { authorization: `Bearer ${k.secret}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }) });
        const isPaused = async () => {
          const r = await ask();
          const b = await r.json().catch(() => ({}));
          return r.status === 403 && b.error?.code === 'key_paused' ? b : null;
        };
        // the key is known to the agent and not paused
        await until(async () => (await ask()).status !== 401, { timeoutMs: 5000, what: 'the agent to know the key' });
        assert.equal(await isPaused(), null);
        await new Promise((r) => setTimeout(r, 1200)); // the engine learns that rules exist
        await report(k.key.id, 1); // 1,500 tokens in the window: under 2,000/min
        await new Promise((r) => setTimeout(r, 500));
        assert.equal(await isPaused(), null);
        const t0 = Date.now();
        await report(k.key.id, 1); // 3,000: over
        const body = await until(isPaused, { timeoutMs: 5000, intervalMs: 20, what: 'the agent to refuse the key' });
        const lag = Date.now() - t0;
        assert.ok(lag < 1500, `refused ${lag} ms after the usage was reported`);
        assert.match(body.error.message, new RegExp(rule.rule.id));
        const key = await cp.adminCall('GetKey', { id: k.key.id });
        assert.equal(key.status, 'KEY_STATUS_PAUSED');
        assert.match(key.status_reason, /token velocity/);
        // the pause and the alert's record are two writes: the agent may refuse the key a moment before
        // the alert is listed
        const fired = await until(async () => {
          const a = (await cp.adminCall('ListAlerts', { rule_id: rule.rule.id })).alerts;
          return a.length ? a : null;
        }, { timeoutMs: 5000, what: 'the alert to be recorded' });
        assert.equal(fired.length, 1);
        assert.equal(fired[0].action_taken, 'key_paused');
        // resume lifts it
        await cp.adminCall('SetKeyStatus', { id: k.key.id, status: 'KEY_STATUS_ACTIVE' });
        await until(async () => (await isPaused()) === null, { timeoutMs: 3000, what: 'the resume to reach the agent' });
      } finally {
        await agent.stop();
      }
    });
  });
}
