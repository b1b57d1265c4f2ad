// /dev/fuse system calls: open, mount a FUSE file system served by that fd, receive the
// kernel's INIT request, unmount (the next read reports ENODEV).
import { expect } from 'chai';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native/index.js';

const FUSE_INIT = 26;
const MNT_DETACH = 2;

describe('native /dev/fuse', function () {
  before(function () {
    if (!existsSync('/dev/fuse') || process.getuid?.() !== 0) this.skip();
  });

  it('mounts, reads INIT, unmounts', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vhost-s3-fuse-'));
    const fd = native.fuseOpen();
    try {
      native.mount('vhost-s3-test', dir, 'fuse.vhost-s3-test', 0, `fd=${fd},rootmode=40000,user_id=0,group_id=0`);
      const buf = new Uint8Array(1 << 17);
      let n = -1;
      for (let i = 0; i < 200 && n < 0; i++) {
        n = native.readFd(fd, buf);
        if (n < 0) await new Promise((r) => setTimeout(r, 10));
      }
      expect(n).to.be.greaterThan(40);
      const v = new DataView(buf.buffer);
      expect(v.getUint32(0, true)).to.equal(n); // fuse_in_header.len
      expect(v.getUint32(4, true)).to.equal(FUSE_INIT);
      expect(v.getUint32(40, true)).to.equal(7); // fuse_init_in.major
      native.umount(dir, MNT_DETACH);
      let err: unknown;
      try {
        native.readFd(fd, buf);
      } catch (e) {
        err = e;
      }
      expect((err as { code?: string }).code).to.equal('ENODEV');
    } finally {
      native.close(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a mount on a missing directory with ENOENT', () => {
    const fd = native.fuseOpen();
    try {
      expect(() => native.mount('x', '/nonexistent/vhost-s3', 'fuse.x', 0, `fd=${fd},rootmode=40000,user_id=0,group_id=0`))
        .to.throw().with.property('code', 'ENOENT');
    } finally {
      native.close(fd);
    }
  });
});
