// verifyWebhook: Attio (HMAC-SHA256 of the raw body, hex, secret in the vault per tenant) and
// HubSpot v3 (method + URL + body + timestamp, base64, the app's client secret), with every
// signature computed here with node:crypto, apart from the Rust code under test.
import express from 'express';
import { createHmac, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { AuthpipeError, isWebhookRejection, type VerifyWebhookInput } from '..';
import { closeServer, listenOnLoopback, newKey, open, rejection, testStore } from './helpers';

const HUBSPOT_SECRET = `hubspot-cs-${randomBytes(8).toString('hex')}`;
const SECRET_A = `whsec_a_${randomBytes(16).toString('hex')}`;
const SECRET_B = `whsec_b_${randomBytes(16).toString('hex')}`;

const authpipe = open({ store: testStore(), masterKey: newKey(), providers: { hubspot: { clientId: 'hub-id', clientSecret: HUBSPOT_SECRET } } });

beforeAll(async () => {
  await authpipe.setSecret({ tenantId: 'org_a', provider: 'attio', name: 'webhook', value: SECRET_A });
  await authpipe.setSecret({ tenantId: 'org_b', provider: 'attio', name: 'webhook', value: SECRET_B });
});

function attioSignature(secret: string, body: string | Buffer): string {
  return createHmac('sha256', secret).update(body).digest('hex');
}

/** HubSpot's v3 rule, written out here: these escapes decoded in the URL, then one HMAC, base64. */
function hubspotSignature(method: string, url: string, body: string, timestamp: string, secret = HUBSPOT_SECRET): string {
  const decoded = url.replace(/%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)/gi, (escape) => decodeURIComponent(escape));
  return createHmac('sha256', secret).update(`${method}${decoded}${body}${timestamp}`).digest('base64');
}

const EVENT = '{ "webhook_id": "wh_1", "events": [ { "event_type": "record.created", "id": { "record_id": "r_1" } } ] }';

function attio(overrides: Partial<VerifyWebhookInput> = {}): VerifyWebhookInput {
  return { provider: 'attio', tenantId: 'org_a', headers: { 'attio-signature': attioSignature(SECRET_A, EVENT) }, body: EVENT, ...overrides };
}

describe('Attio', () => {
  test('a body signed with the tenant’s secret verifies, under either header, in every header and body shape', async () => {
    const signature = attioSignature(SECRET_A, EVENT);
    const shapes: Array<Pick<VerifyWebhookInput, 'headers' | 'body'>> = [
      { headers: { 'attio-signature': signature, 'x-attio-signature': signature }, body: EVENT },
      { headers: { 'X-Attio-Signature': signature }, body: Buffer.from(EVENT) },
      { headers: { 'Attio-Signature': signature.toUpperCase() }, body: new TextEncoder().encode(EVENT) },
      { headers: new Headers({ 'Attio-Signature': signature, 'Content-Type': 'application/json' }), body: new TextEncoder().encode(EVENT).buffer },
      { headers: { 'attio-signature': [signature], 'content-length': 120, host: undefined }, body: EVENT },
    ];
    for (const shape of shapes) await expect(authpipe.verifyWebhook(attio(shape))).resolves.toEqual({ valid: true });
  });

  test('missing, malformed and wrong signatures each have their own code', async () => {
    const signature = attioSignature(SECRET_A, EVENT);
    await rejection(authpipe.verifyWebhook(attio({ headers: {} })), 'WEBHOOK_SIGNATURE_MISSING');
    await rejection(authpipe.verifyWebhook(attio({ headers: new Headers({ 'content-type': 'application/json' }) })), 'WEBHOOK_SIGNATURE_MISSING');
    await rejection(authpipe.verifyWebhook(attio({ headers: { 'attio-signature': 'z'.repeat(64) } })), 'WEBHOOK_SIGNATURE_MALFORMED');
    await rejection(authpipe.verifyWebhook(attio({ headers: { 'attio-signature': signature.slice(2) } })), 'WEBHOOK_SIGNATURE_MALFORMED');
    await rejection(authpipe.verifyWebhook(attio({ headers: { 'attio-signature': `${signature}00` } })), 'WEBHOOK_SIGNATURE_MALFORMED');
    await rejection(authpipe.verifyWebhook(attio({ headers: { 'attio-signature': [signature, signature] } })), 'WEBHOOK_SIGNATURE_MALFORMED');
    const wrong = attioSignature(SECRET_A, `${EVENT} `);
    await rejection(authpipe.verifyWebhook(attio({ headers: { 'attio-signature': wrong } })), 'WEBHOOK_SIGNATURE_MISMATCH');
  });

  test('a tampered body, or one parsed and serialised again, does not verify', async () => {
    await rejection(authpipe.verifyWebhook(attio({ body: EVENT.replace('r_1', 'r_2') })), 'WEBHOOK_SIGNATURE_MISMATCH');
    await rejection(authpipe.verifyWebhook(attio({ body: JSON.stringify(JSON.parse(EVENT)) })), 'WEBHOOK_SIGNATURE_MISMATCH');
    const parsed = await rejection(authpipe.verifyWebhook(attio({ body: JSON.parse(EVENT) })), 'INVALID_ARGUMENT');
    expect(parsed.message).toContain('express.raw');
  });

  test('another tenant’s secret does not verify, and a tenant without one is a configuration error', async () => {
    const err = await rejection(authpipe.verifyWebhook(attio({ tenantId: 'org_b' })), 'WEBHOOK_SIGNATURE_MISMATCH');
    expect(err.message).not.toContain(SECRET_A);
    expect(err.message).not.toContain(SECRET_B);
    expect(isWebhookRejection(err)).toBe(true);
    const missing = await rejection(authpipe.verifyWebhook(attio({ tenantId: 'org_none' })), 'WEBHOOK_SECRET_MISSING');
    expect(missing.message).toContain('setSecret');
    expect(isWebhookRejection(missing)).toBe(false);
    await rejection(authpipe.verifyWebhook(attio({ tenantId: undefined })), 'INVALID_ARGUMENT');
  });

  test('a named secret is read instead of "webhook"', async () => {
    const second = `whsec_2_${randomBytes(8).toString('hex')}`;
    await authpipe.setSecret({ tenantId: 'org_a', provider: 'attio', name: 'webhook-notes', value: second });
    const headers = { 'attio-signature': attioSignature(second, EVENT) };
    await expect(authpipe.verifyWebhook(attio({ name: 'webhook-notes', headers }))).resolves.toEqual({ valid: true });
    await rejection(authpipe.verifyWebhook(attio({ headers })), 'WEBHOOK_SIGNATURE_MISMATCH');
  });

  test('headers named twice in different cases, and providers without a scheme, are refused', async () => {
    const signature = attioSignature(SECRET_A, EVENT);
    await rejection(authpipe.verifyWebhook(attio({ headers: { 'Attio-Signature': signature, 'attio-signature': signature } })), 'INVALID_ARGUMENT');
    await rejection(authpipe.verifyWebhook(attio({ provider: 'pipedrive' })), 'WEBHOOK_UNSUPPORTED');
    await rejection(authpipe.verifyWebhook(attio({ provider: 'nocrm' })), 'UNKNOWN_PROVIDER');
  });
});

describe('HubSpot v3', () => {
  const URL = 'https://app.example.com/webhooks/hubspot?portal=42';
  const BODY = '[{"eventId":1,"subscriptionType":"contact.creation","portalId":42}]';

  function hubspot(timestamp: number, overrides: Partial<VerifyWebhookInput> = {}, signed = { method: 'POST', url: URL }): VerifyWebhookInput {
    const ts = String(timestamp);
    return {
      provider: 'hubspot',
      method: 'POST',
      url: URL,
      body: BODY,
      headers: { 'x-hubspot-signature-v3': hubspotSignature(signed.method, signed.url, BODY, ts), 'x-hubspot-request-timestamp': ts },
      ...overrides,
    };
  }

  test('a request signed now with the client secret verifies', async () => {
    await expect(authpipe.verifyWebhook(hubspot(Date.now()))).resolves.toEqual({ valid: true });
    const headers = new Headers(hubspot(Date.now()).headers as Record<string, string>);
    await expect(authpipe.verifyWebhook(hubspot(Date.now(), { headers }))).resolves.toEqual({ valid: true });
  });

  test('timestamps more than 5 minutes away are refused, and a missing one is invalid', async () => {
    const minute = 60_000;
    await expect(authpipe.verifyWebhook(hubspot(Date.now() - 4 * minute))).resolves.toEqual({ valid: true });
    await rejection(authpipe.verifyWebhook(hubspot(Date.now() - 6 * minute)), 'WEBHOOK_TIMESTAMP_EXPIRED');
    await rejection(authpipe.verifyWebhook(hubspot(Date.now() + 6 * minute)), 'WEBHOOK_TIMESTAMP_EXPIRED');
    const { 'x-hubspot-signature-v3': signature } = hubspot(Date.now()).headers as Record<string, string>;
    await rejection(authpipe.verifyWebhook(hubspot(Date.now(), { headers: { 'x-hubspot-signature-v3': signature } })), 'WEBHOOK_TIMESTAMP_INVALID');
  });

  test('another method, URL or body does not verify', async () => {
    const now = Date.now();
    await rejection(authpipe.verifyWebhook(hubspot(now, { method: 'PUT' })), 'WEBHOOK_SIGNATURE_MISMATCH');
    await rejection(authpipe.verifyWebhook(hubspot(now, { url: 'https://app.example.com/webhooks/hubspot?portal=43' })), 'WEBHOOK_SIGNATURE_MISMATCH');
    await rejection(authpipe.verifyWebhook(hubspot(now, { url: 'https://evil.example/webhooks/hubspot?portal=42' })), 'WEBHOOK_SIGNATURE_MISMATCH');
    await rejection(authpipe.verifyWebhook(hubspot(now, { body: BODY.replace('42', '43') })), 'WEBHOOK_SIGNATURE_MISMATCH');
    await rejection(authpipe.verifyWebhook(hubspot(now, { url: '/webhooks/hubspot?portal=42' })), 'INVALID_ARGUMENT');
    await rejection(authpipe.verifyWebhook(hubspot(now, { method: undefined })), 'INVALID_ARGUMENT');
  });

  test('the URL is signed with HubSpot’s escapes decoded', async () => {
    const encoded = 'https://app.example.com/webhooks/hub%3Aspot?ids=1%2C2&next=%2Fx%40y&tilde=%7E';
    await expect(authpipe.verifyWebhook(hubspot(Date.now(), { url: encoded }, { method: 'POST', url: encoded }))).resolves.toEqual({ valid: true });
  });

  const bare = open({ store: testStore(), masterKey: newKey() });
  test('an instance without the client secret cannot verify', async () => {
    const err = await rejection(bare.verifyWebhook(hubspot(Date.now())), 'WEBHOOK_SECRET_MISSING');
    expect(err.message).toContain('providers.hubspot.clientSecret');
  });
});

describe('a custom provider', () => {
  const custom = open({
    store: testStore(),
    masterKey: newKey(),
    providers: {
      mycrm: {
        authorizeUrl: 'https://crm.example/oauth/authorize',
        tokenUrl: 'https://crm.example/oauth/token',
        webhook: { signs: 'body', signatureHeaders: ['X-MyCRM-Signature'], encoding: 'base64' },
      },
    },
  });

  test('declares its scheme as data, and verifies with it', async () => {
    const secret = `mycrm_${randomBytes(8).toString('hex')}`;
    await custom.setSecret({ tenantId: 'org_a', provider: 'mycrm', name: 'webhook', value: secret });
    const signature = createHmac('sha256', secret).update(EVENT).digest('base64');
    const input = { provider: 'mycrm', tenantId: 'org_a', body: EVENT };
    await expect(custom.verifyWebhook({ ...input, headers: { 'x-mycrm-signature': signature } })).resolves.toEqual({ valid: true });
    await rejection(custom.verifyWebhook({ ...input, headers: { 'x-mycrm-signature': createHmac('sha256', secret).update(EVENT).digest('hex') } }), 'WEBHOOK_SIGNATURE_MALFORMED');
    await rejection(custom.verifyWebhook({ ...input, headers: { 'attio-signature': attioSignature(secret, EVENT) } }), 'WEBHOOK_SIGNATURE_MISSING');
  });

  test('a scheme that cannot work is refused when the instance is made', () => {
    const providers = { mycrm: { authorizeUrl: 'https://crm.example/a', tokenUrl: 'https://crm.example/t', webhook: { signs: 'methodUriBodyTimestamp', signatureHeaders: ['X-Sig'], encoding: 'hex' } } } as const;
    expect(() => open({ store: testStore(), masterKey: newKey(), providers })).toThrow(/providers\.mycrm\.webhook.*timestamp/);
  });
});

describe('through an Express server with express.raw', () => {
  test('a signed post is accepted, a forged or re-signed one is answered 401', async () => {
    const app = express();
    app.post('/webhooks/attio/:tenantId', express.raw({ type: 'application/json' }), async (req, res) => {
      try {
        await authpipe.verifyWebhook({ provider: 'attio', tenantId: String(req.params.tenantId), headers: req.headers, body: req.body as Buffer });
      } catch (err) {
        if (isWebhookRejection(err)) return void res.status(401).send((err as AuthpipeError).code);
        return void res.status(500).send(err instanceof AuthpipeError ? err.code : 'error');
      }
      const event = JSON.parse((req.body as Buffer).toString('utf8')) as { webhook_id: string };
      res.status(200).send(event.webhook_id);
    });
    let origin = '';
    app.post('/webhooks/hubspot', express.raw({ type: 'application/json' }), async (req, res) => {
      try {
        await authpipe.verifyWebhook({ provider: 'hubspot', headers: req.headers, body: req.body as Buffer, method: req.method, url: `${origin}${req.originalUrl}` });
        res.sendStatus(204);
      } catch (err) {
        res.status(isWebhookRejection(err) ? 401 : 500).send((err as AuthpipeError).code);
      }
    });
    const server = createServer(app);
    origin = await listenOnLoopback(server);
    try {
      const post = (path: string, body: string, headers: Record<string, string>) =>
        fetch(`${origin}${path}`, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } });

      const accepted = await post('/webhooks/attio/org_a', EVENT, { 'Attio-Signature': attioSignature(SECRET_A, EVENT), 'X-Attio-Signature': attioSignature(SECRET_A, EVENT) });
      expect([accepted.status, await accepted.text()]).toEqual([200, 'wh_1']);
      const forged = await post('/webhooks/attio/org_a', EVENT, { 'Attio-Signature': attioSignature('guessed', EVENT) });
      expect([forged.status, await forged.text()]).toEqual([401, 'WEBHOOK_SIGNATURE_MISMATCH']);
      const otherTenant = await post('/webhooks/attio/org_b', EVENT, { 'Attio-Signature': attioSignature(SECRET_A, EVENT) });
      expect(otherTenant.status).toBe(401);
      const unsigned = await post('/webhooks/attio/org_a', EVENT, {});
      expect([unsigned.status, await unsigned.text()]).toEqual([401, 'WEBHOOK_SIGNATURE_MISSING']);
      const unconfigured = await post('/webhooks/attio/org_none', EVENT, { 'Attio-Signature': attioSignature(SECRET_A, EVENT) });
      expect([unconfigured.status, await unconfigured.text()]).toEqual([500, 'WEBHOOK_SECRET_MISSING']);

      const ts = String(Date.now());
      const url = `${origin}/webhooks/hubspot?portal=42`;
      const hub = await post('/webhooks/hubspot?portal=42', '[]', {
        'X-HubSpot-Signature-v3': hubspotSignature('POST', url, '[]', ts),
        'X-HubSpot-Request-Timestamp': ts,
      });
      expect(hub.status).toBe(204);
      const replayedElsewhere = await post('/webhooks/hubspot?portal=43', '[]', {
        'X-HubSpot-Signature-v3': hubspotSignature('POST', url, '[]', ts),
        'X-HubSpot-Request-Timestamp': ts,
      });
      expect([replayedElsewhere.status, await replayedElsewhere.text()]).toEqual([401, 'WEBHOOK_SIGNATURE_MISMATCH']);
    } finally {
      await closeServer(server);
    }
  });
});
