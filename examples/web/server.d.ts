import type { Authpipe } from '@authpipe/node';
import type { Sandbox } from '@authpipe/node/testing';

export interface WebDemo {
  /** `http://127.0.0.1:<port>` */
  readonly origin: string;
  readonly authpipe: Authpipe;
  /** The Attio sandbox; null when ATTIO_CLIENT_ID and ATTIO_CLIENT_SECRET chose the real Attio. */
  readonly sandbox: Sandbox | null;
  close(): Promise<void>;
}

/** Starts the web demo; `port` 0 picks a free port, `react: '18'` bundles the page with React 18. */
export function startWebDemo(options?: { port?: number; react?: '18' | '19'; env?: Record<string, string | undefined> }): Promise<WebDemo>;
