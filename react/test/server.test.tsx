/** @jest-environment node */
// No window, no document: what a server render (Next.js, Remix, renderToString) sees.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { renderToString } from 'react-dom/server';
import { ConnectButton, useConnect } from '../src';
import { ERROR_CODES } from '../src/generated';

declare const EXPECTED_REACT_MAJOR: string;
const root = join(__dirname, '..');

function OwnButton() {
  const { status, connection } = useConnect({ provider: 'attio', getSessionToken: async () => 'tok' });
  return <span data-status={status}>{connection?.account?.name ?? 'not connected'}</span>;
}

test(`renderToString renders the button and the hook on React ${EXPECTED_REACT_MAJOR}`, () => {
  expect(typeof window).toBe('undefined');
  const html = renderToString(
    <>
      <ConnectButton provider="attio" className="cta" />
      <OwnButton />
    </>,
  );
  expect(html).toContain('<button class="cta" type="button" aria-busy="false" data-status="idle">Connect Attio</button>');
  expect(html).toContain('<span data-status="idle">not connected</span>');
});

describe('the built package (npm run build)', () => {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));

  test('both entries begin with "use client", and exports name their declarations', () => {
    const esm = readFileSync(join(root, pkg.exports['.'].import.default), 'utf8');
    const cjs = readFileSync(join(root, pkg.exports['.'].require.default), 'utf8');
    expect(esm.startsWith("'use client';")).toBe(true);
    expect(cjs).toMatch(/^"use strict";\n'use client';/);
    for (const types of [pkg.exports['.'].import.types, pkg.exports['.'].require.types]) {
      expect(readFileSync(join(root, types), 'utf8')).toContain('export { ConnectButton');
    }
  });

  test('loads through require and import in plain Node, touching no browser global', () => {
    // A child process: the package as Node itself resolves it, with nothing Jest put in place.
    const script = `
      const cjs = require('@authpipe/react');
      import('@authpipe/react').then((esm) => {
        console.log(JSON.stringify([typeof cjs.ConnectButton, typeof cjs.useConnect, typeof esm.ConnectButton, typeof esm.useConnect, esm.ERROR_CODES.length]));
      });`;
    const out = execFileSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual(['object', 'function', 'object', 'function', ERROR_CODES.length]);
  });
});
