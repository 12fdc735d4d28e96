// Lets a child process `require` the tests' TypeScript modules (`node -r ./ts-require.js x.ts`),
// transpiled as Jest's ts-jest would, without type checks (tsc -p __test__ does those).
const { readFileSync } = require('node:fs');
const ts = require('typescript');

require.extensions['.ts'] = (module, filename) => {
  const { outputText } = ts.transpileModule(readFileSync(filename, 'utf8'), {
    fileName: filename,
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
  });
  module._compile(outputText, filename);
};
