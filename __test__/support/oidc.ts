import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export interface OidcProvider {
  issuer: string;
  clientId: string;
  clientSecret: string;
  /** RFC 7662 introspection of a token, as the resource server would do it. */
  introspect(token: string): Promise<{ active: boolean; [claim: string]: unknown }>;
  close(): Promise<void>;
}

/** Starts oidc-provider (see oidc-server.mjs) in a child process. */
export async function startOidcProvider(options: { redirectUris: string[]; accessTokenTtl?: number }): Promise<OidcProvider> {
  const clientId = 'authpipe-test';
  const clientSecret = 'a-long-test-secret-that-is-not-secret-at-all-0123456789';
  const child = spawn(process.execPath, [join(__dirname, 'oidc-server.mjs'), JSON.stringify({ clientId, clientSecret, ...options })], {
    stdio: ['pipe', 'pipe', 'ignore'], // its stderr is dev-mode notices
  });
  const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string];
  const { issuer } = JSON.parse(line) as { issuer: string };
  const basic = `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64')}`;
  return {
    issuer,
    clientId,
    clientSecret,
    async introspect(token) {
      const res = await fetch(`${issuer}/token/introspection`, {
        method: 'POST',
        headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token }),
      });
      return (await res.json()) as { active: boolean };
    },
    async close() {
      const exited = once(child, 'exit');
      child.stdin!.end();
      await exited;
    },
  };
}

/** Follows redirects like a browser (with a path-aware cookie jar) until one leaves for `stopAt`'s origin. */
export async function followUntil(url: string, stopAt: string): Promise<string> {
  const jar = new Map<string, { value: string; path: string }>();
  for (let hop = 0; hop < 15; hop++) {
    const path = new URL(url).pathname;
    const cookie = [...jar.entries()]
      .filter(([, c]) => path === c.path || path.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`) || c.path === '/')
      .map(([k, c]) => `${k.split('\0')[0]}=${c.value}`)
      .join('; ');
    const res = await fetch(url, { redirect: 'manual', headers: cookie ? { cookie } : {} });
    for (const set of res.headers.getSetCookie()) {
      const [pair, ...attrs] = set.split(';').map((s) => s.trim());
      const [name, ...value] = pair!.split('=');
      const cookiePath = attrs.find((a) => /^path=/i.test(a))?.slice(5) ?? '/';
      const expired = attrs.some((a) => /^expires=/i.test(a) && Date.parse(a.slice(8)) <= Date.now());
      if (expired || value.join('=') === '') jar.delete(`${name}\0${cookiePath}`);
      else jar.set(`${name}\0${cookiePath}`, { value: value.join('='), path: cookiePath });
    }
    const location = res.headers.get('location');
    if (!location) throw new Error(`no redirect from ${path} (HTTP ${res.status}): ${await res.text()}`);
    const next = new URL(location, url).href;
    if (new URL(next).origin === new URL(stopAt).origin) return next;
    url = next;
  }
  throw new Error('too many redirects');
}
