// Keeps docs/configuration.md in step with the configuration schemas.
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { schemas, type OptionSpec } from '../../src/config.js';

describe('docs/configuration.md', () => {
  const doc = readFileSync(new URL('../../../docs/configuration.md', import.meta.url), 'utf8');
  for (const [command, schema] of Object.entries(schemas)) {
    it(`documents every option of ${command}`, () => {
      for (const spec of Object.values(schema) as OptionSpec[]) {
        expect(doc, spec.arg).to.include(`\`--${spec.arg}\``);
        expect(doc, spec.env).to.include(`\`${spec.env}\``);
      }
    });
  }
});
