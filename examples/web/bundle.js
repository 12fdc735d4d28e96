// Bundles the demo page (page.tsx) with @authpipe/react as built in react/dist, in memory.
// React comes from react/node_modules, one copy for the page and the package; `react: '18'`
// swaps in the aliased React 18 there (what the browser tests run both versions with).
'use strict';
const path = require('node:path');
const esbuild = require('esbuild');

const reactPackage = path.join(__dirname, '..', '..', 'react');

/** @returns {Promise<string>} the page's script */
async function bundlePage({ react = '19' } = {}) {
  const alias = { '@authpipe/react': path.join(reactPackage, 'dist', 'esm', 'index.js') };
  // Always aliased: the repository root has a React of its own too (for the Next.js example),
  // which page.tsx would otherwise find first, next to the package's: two Reacts break hooks.
  if (react === '18') Object.assign(alias, { react: 'react-18', 'react-dom': 'react-dom-18' });
  else if (react === '19') Object.assign(alias, { react: path.join(reactPackage, 'node_modules', 'react'), 'react-dom': path.join(reactPackage, 'node_modules', 'react-dom') });
  else throw new Error(`react must be '18' or '19', not ${react}`);
  const result = await esbuild.build({
    entryPoints: [path.join(__dirname, 'page.tsx')],
    bundle: true,
    write: false,
    format: 'iife',
    target: 'es2020',
    jsx: 'automatic',
    // Aliased packages resolve from the working directory: react/, where both Reacts are installed.
    absWorkingDir: reactPackage,
    nodePaths: [path.join(reactPackage, 'node_modules')],
    alias,
    define: { 'process.env.NODE_ENV': '"production"' },
    minify: true,
    logLevel: 'silent',
  });
  return result.outputFiles[0].text;
}

module.exports = { bundlePage };
