// Builds dist/esm (import) and dist/cjs (require), each with its type declarations, and checks
// that both entries open with "use client" (Next.js App Router reads it there).
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
rmSync('dist', { recursive: true, force: true });
const builds = [
  { dir: 'dist/esm', type: 'module', flags: [] },
  { dir: 'dist/cjs', type: 'commonjs', flags: ['--module', 'commonjs', '--moduleResolution', 'node10'] },
];
for (const { dir, type, flags } of builds) {
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json', '--outDir', dir, ...flags], { stdio: 'inherit' });
  writeFileSync(`${dir}/package.json`, `${JSON.stringify({ type })}\n`);
  const entry = readFileSync(`${dir}/index.js`, 'utf8');
  if (!/^(?:"use strict";\s*)?['"]use client['"];/.test(entry)) throw new Error(`${dir}/index.js does not begin with "use client"`);
}
console.log('built dist/esm and dist/cjs');
