// ESLint for the TypeScript (src, test, bench), run by `npm test` before the tests: type-aware
// typescript-eslint rules that catch what tsc does not (promises nobody awaits or catches, values
// typed `any` flowing into typed code, assertions that assert nothing). No stylistic rules: the
// code's layout is not the linter's business. Where the code is right and a rule is not, disable
// it on that line only, with the reason: `// eslint-disable-next-line RULE -- why`.
//
// Base: typescript-eslint's strictTypeChecked (a superset of recommendedTypeChecked) plus
// ESLint's recommended core rules, with these changes (why, one line each):
// - no-floating-promises: node:test's test/it/describe return promises the runner tracks itself.
// - restrict-template-expressions: numbers in messages are fine; objects, nullish, any and
//   booleans still need an explicit String() (the strict default forbids numbers too, 190 sites).
// - prefer-promise-reject-errors: rejecting with a value typed `unknown` (a caught error passed
//   on: reject(err) in a catch) is propagation, as `throw err` is for only-throw-error; a
//   literal or any other non-Error type still needs an Error.
// - switch-exhaustiveness-check (not in strict): a switch over a union without a default must
//   name every member, so adding a protocol method or an error code shows every switch to update.
// - off no-non-null-assertion: with noUncheckedIndexedAccess, `x[i]!` after a length or `has`
//   check is the idiom here (70 sites); rewriting each into if/throw adds noise, not safety.
// - off no-unnecessary-condition: it trusts the declared types, and this code checks at run time
//   what the types claim (API input from plain JS, `after` hooks whose `before` may have thrown,
//   fields changed across an `await`); most of its reports here are such deliberate checks.
// - off no-confusing-void-expression: `() => void call()` shorthand is style, not a bug class.
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['dist/', 'native/', 'build/'] },
  { linterOptions: { reportUnusedDisableDirectives: 'error' } },
  js.configs.recommended,
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.strictTypeChecked],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': ['error', {
        allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['test', 'it', 'describe', 'suite'] }],
      }],
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true }],
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true }],
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-unnecessary-condition': 'off',
      '@typescript-eslint/no-confusing-void-expression': 'off',
    },
  },
);
