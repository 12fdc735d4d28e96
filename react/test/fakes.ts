// Stand-ins for what jsdom lacks: a popup window (jsdom's window.open opens nothing) and form
// navigation (jsdom's form.submit() is not implemented). Everything else is jsdom's own.

/** A popup as the opener sees it: `closed`, `close()`, `focus()`, its location and blank document. */
export class FakePopup {
  closed = false;
  focused = 0;
  readonly location = { href: 'about:blank' };
  readonly document = document.implementation.createHTMLDocument('');
  close(): void {
    this.closed = true;
  }
  focus(): void {
    this.focused++;
  }
}

export interface Opened {
  url: string;
  name: string;
  features: string;
  popup: FakePopup | null;
}

/** Replaces window.open: each call is recorded and gets a new FakePopup (or null: blocked). */
export function fakeWindowOpen(options: { blocked?: boolean } = {}): Opened[] {
  const opened: Opened[] = [];
  jest.spyOn(window, 'open').mockImplementation((url, name, features) => {
    const popup = options.blocked ? null : new FakePopup();
    opened.push({ url: String(url), name: String(name), features: String(features), popup });
    return popup as unknown as Window;
  });
  return opened;
}

export interface Submitted {
  method: string;
  action: string;
  target: string;
  fields: Record<string, string>;
}

/** Records form submissions (the POST that carries the session token) instead of navigating. */
export function captureFormSubmits(): Submitted[] {
  const submitted: Submitted[] = [];
  jest.spyOn(HTMLFormElement.prototype, 'submit').mockImplementation(function (this: HTMLFormElement) {
    const fields = Object.fromEntries([...new FormData(this).entries()].map(([k, v]) => [k, String(v)]));
    submitted.push({ method: this.method, action: this.action, target: this.target, fields });
  });
  return submitted;
}

/** Delivers a message to the page as if `source` had posted it from `origin`. */
export function postMessageFrom(source: unknown, origin: string, data: unknown): void {
  const event = new MessageEvent('message', { data, origin });
  // jsdom accepts only its own windows as `source`; the hook compares it by identity.
  Object.defineProperty(event, 'source', { value: source });
  window.dispatchEvent(event);
}

export const connection = {
  provider: 'attio',
  tenantId: 'org_acme',
  userId: 'user_123',
  status: 'active',
  scopes: ['record_permission:read'],
  account: { id: 'ws_1', name: 'Acme Corp' },
} as const;
