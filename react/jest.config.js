// Every test file runs twice: against React 19 (the `react` devDependency) and React 18 (the
// aliased `react-18` / `react-dom-18`, mapped in for `react` and `react-dom` everywhere).
const base = {
  testMatch: ['<rootDir>/test/**/*.test.ts?(x)'],
  transform: { '^.+\\.tsx?$': ['ts-jest', { tsconfig: '<rootDir>/test/tsconfig.json' }] },
  // Sources import './x.js' (what ESM output needs); Jest resolves the .ts beside it.
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
};

const react18 = {
  '^react$': 'react-18',
  '^react/(.*)$': 'react-18/$1',
  '^react-dom$': 'react-dom-18',
  '^react-dom/(.*)$': 'react-dom-18/$1',
};

module.exports = {
  projects: [
    { ...base, displayName: 'react 19', globals: { EXPECTED_REACT_MAJOR: '19' } },
    { ...base, displayName: 'react 18', globals: { EXPECTED_REACT_MAJOR: '18' }, moduleNameMapper: { ...base.moduleNameMapper, ...react18 } },
  ],
};
