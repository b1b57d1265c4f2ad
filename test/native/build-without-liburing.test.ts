// `npm ci` must build the addon on a machine without liburing-dev (a fresh Debian has
// g++, make and python3, not liburing): binding.gyp defines VHS_HAVE_LIBURING only when
// liburing.h exists, and uring.cc then exports a createUring that answers null, which the
// block I/O layer already treats as "no io_uring here" (synchronous I/O).
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
const NODE_INCLUDE = '/usr/include/node';

describe('native: built without liburing-dev', function () {
  this.timeout(60_000);

  it('binding.gyp links liburing only when its header is there', () => {
    const gyp = readFileSync(join(ROOT, 'binding.gyp'), 'utf8');
    expect(gyp).to.match(/"have_liburing%": "<!\(test -f \/usr\/include\/liburing\.h/);
    expect(gyp).to.match(/\["have_liburing==1", \{\s*"defines": \["VHS_HAVE_LIBURING"\],\s*"libraries": \["-luring"\]/);
    expect(gyp.match(/-luring/g), 'liburing linked only in the condition').to.have.length(1);
  });

  it('uring.cc compiles without VHS_HAVE_LIBURING and without liburing.h on the include path', function () {
    if (!existsSync(join(NODE_INCLUDE, 'node_api.h'))) this.skip();
    const addonApi = createRequire(import.meta.url)('node-addon-api') as { include_dir: string };
    // Compiled alone, then preprocessed with -H to prove liburing.h is never included.
    const args = [
      '-std=c++17', '-fsyntax-only', '-DNAPI_VERSION=8', '-DNAPI_DISABLE_CPP_EXCEPTIONS', '-D_GNU_SOURCE',
      `-I${NODE_INCLUDE}`, `-I${resolve(ROOT, addonApi.include_dir)}`, `-I${join(ROOT, 'native')}`,
      join(ROOT, 'native/uring.cc'),
    ];
    const r = spawnSync('g++', args, { encoding: 'utf8' });
    expect(r.status, r.stderr).to.equal(0);
    const pp = spawnSync('g++', ['-E', '-H', ...args.filter((a) => a !== '-fsyntax-only')], { encoding: 'utf8', maxBuffer: 64 << 20 });
    expect(pp.status, pp.stderr).to.equal(0);
    expect(pp.stderr, 'headers included without VHS_HAVE_LIBURING').to.not.include('liburing');
  });
});
