// @authpipe/react cannot import from a server package, so it has its own copies of two lists: the
// error codes (react/src/generated.ts, generated from the Rust core like lib/generated.ts) and the
// built-in providers' display names (kept by hand). Here its build is held equal to the originals.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ERROR_CODES } from '..';

// The built CommonJS entry, as `require('@authpipe/react')` loads it (react/'s prepare builds it).
const react = require(join(__dirname, '..', 'react', 'dist', 'cjs', 'index.js')) as { ERROR_CODES: readonly string[]; providerDisplayName(provider: string): string };

test("the React package's error codes are @authpipe/node's", () => {
  expect([...react.ERROR_CODES]).toEqual([...ERROR_CODES]);
});

test("the button's default names are the built-in providers' display names", () => {
  const builtin = JSON.parse(readFileSync(join(__dirname, '..', 'crates', 'authpipe-core', 'src', 'providers', 'builtin.json'), 'utf8')) as Array<{ id: string; displayName: string }>;
  for (const { id, displayName } of builtin) expect(react.providerDisplayName(id)).toBe(displayName);
});
