// `node dist/test/support/guest/build-image.js`: builds (or finds) the cached
// guest image and prints where it is. Used by .ci/run to build it before the
// tests; the tests build it themselves when it is missing.

import { checkGuestPrereqs } from './qemu.js';
import { ensureGuestImage } from './image.js';

const pre = checkGuestPrereqs();
if (!pre.ok) {
  console.error('guest prerequisites missing:\n  ' + pre.problems.join('\n  '));
  process.exit(1);
}
const t0 = Date.now();
const img = await ensureGuestImage({ log: (m) => console.error(`guest image: ${m}`) });
console.log(`guest image ${img.dir} (${img.kernelPackage} ${img.kernelPackageVersion}; modules: ${img.modules.join(' ')}` +
  `${img.builtin.length ? `; built in: ${img.builtin.join(' ')}` : ''}${img.missing.length ? `; MISSING: ${img.missing.join(' ')}` : ''}) in ${Date.now() - t0} ms`);
