// The TypeScript declarations (src/index.d.ts) type-check a usage example
// (test/types/usage.ts) under --strict, and a misuse is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const tsc = path.join(here, '../node_modules/typescript/bin/tsc');

function check(dir) {
  try {
    execFileSync(process.execPath, [tsc, '-p', dir], { encoding: 'utf8', stdio: 'pipe' });
    return '';
  } catch (e) {
    return e.stdout + e.stderr || String(e);
  }
}

test('the declarations type-check the documented usage', { timeout: 120000 }, () => {
  assert.equal(check(path.join(here, 'types')), '');
});

test('the declarations refuse a wrong priority and a wrong row type', { timeout: 120000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rtsub-types-'));
  try {
    const conf = JSON.parse(fs.readFileSync(path.join(here, 'types/tsconfig.json'), 'utf8'));
    conf.compilerOptions.paths['@rtsub/client'] = [path.join(here, '../src/index.d.ts')];
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify(conf));
    fs.writeFileSync(path.join(dir, 'usage.ts'), `import { createClient } from '@rtsub/client';
      const c = createClient({ url: 'x', token: 't' });
      const s = c.subscribe<{ id: number; title: string }>('n', {});
      s.update(1, { title: 2 });
      s.delete(1, { priority: 'urgent' });\n`);
    const out = check(dir);
    assert.match(out, /urgent/);
    assert.match(out, /number.*string|string.*number/s);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
