// The FUSE engine mounted through /dev/fuse on the in-memory Vfs, driven by ordinary
// tools in child processes (the engine runs on this process's event loop, so the test
// itself must never block it with synchronous file calls).
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { readFile, writeFile, readdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Opcode } from '../../src/fuse/abi.js';
import { FuseServer } from '../../src/fuse/server.js';
import { DevFuseMount, READ_AHEAD_KB, mountDevice } from '../../src/fuse/dev-fuse.js';
import { silentLogger } from '../../src/util/log.js';
import { MemoryVfs } from './memory-vfs.js';

const run = promisify(execFile);
/**
 * Runs `cmd` in directory `dir` of the mount. Never with spawn's `cwd` option: the child
 * would chdir into the mount before exec, while this process — the FUSE server — is
 * blocked in spawn waiting for that exec: a deadlock. `cd` in the shell runs after exec.
 */
const sh = async (cmd: string, dir: string): Promise<string> => (await run('sh', ['-c', `cd "$1" && { ${cmd}; }`, 'sh', dir])).stdout;

describe('/dev/fuse transport', function () {
  this.timeout(30000);
  let dir: string;
  let mount: DevFuseMount | null = null;

  before(function () {
    if (!existsSync('/dev/fuse') || process.getuid?.() !== 0) this.skip();
  });
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'vhost-s3-devfuse-'));
    mount = DevFuseMount.mount(new FuseServer(new MemoryVfs(), { log: silentLogger }), { mountpoint: dir, readOnly: false, fsName: 'memtest', log: silentLogger });
  });
  afterEach(async () => {
    await mount?.unmount();
    mount = null;
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves ordinary tools: write, read, mkdir, mv, ln -s, chmod, truncate, dd with seeks', async () => {
    await writeFile(join(dir, 'a.txt'), 'hello\n');
    expect(await readFile(join(dir, 'a.txt'), 'utf8')).to.equal('hello\n');
    await sh('mkdir -p d/e && mv a.txt d/b.txt && ln -s d/b.txt link && chmod 600 d/b.txt && truncate -s 3 d/b.txt', dir);
    expect(await readFile(join(dir, 'link'), 'utf8')).to.equal('hel');
    expect((await stat(join(dir, 'd/b.txt'))).mode & 0o777).to.equal(0o600);
    expect((await readdir(dir)).sort()).to.deep.equal(['d', 'link']);
    await sh('dd if=/dev/zero of=f bs=4k count=1 seek=10 2>/dev/null && printf x | dd of=f bs=1 seek=5 conv=notrunc 2>/dev/null', dir);
    const f = await readFile(join(dir, 'f'));
    expect(f.length).to.equal(11 * 4096);
    expect(f[5]).to.equal(0x78);
    const sum = await sh('dd if=/dev/urandom of=big bs=1M count=3 2>/dev/null && md5sum big | cut -d" " -f1 && cat big | md5sum | cut -d" " -f1', dir);
    const [a, b] = sum.trim().split('\n');
    expect(a).to.equal(b);
  });

  it('reports errors as Linux does', async () => {
    const err = await sh('rmdir nope 2>&1; mkdir d && touch d/x && rmdir d 2>&1; true', dir);
    expect(err).to.match(/No such file or directory/);
    expect(err).to.match(/Directory not empty/);
  });

  it('raises the mount\'s kernel read-ahead once INIT is answered (large sequential READs)', async () => {
    await writeFile(join(dir, 'f'), new Uint8Array(8 << 20));
    const dev = mountDevice(dir);
    expect(dev).to.match(/^0:\d+$/);
    expect((await readFile(`/sys/class/bdi/${dev}/read_ahead_kb`, 'utf8')).trim()).to.equal(String(READ_AHEAD_KB));
    expect((await sh('cat f | wc -c', dir)).trim()).to.equal(String(8 << 20));
  });

  it('a READ read in place whose reply comes after the next request took the room is answered EIO, never with the other bytes', async () => {
    await mount!.unmount();
    // A server that holds the reply of a READ it read in place until the next request
    // arrives: what the engine never does, and the transport's guard exists for.
    const errors: string[] = [];
    const log = { ...silentLogger, error: (msg: string) => void errors.push(msg) };
    let held: (() => void) | null = null;
    class HoldingServer extends FuseServer {
      override dispatch(...args: Parameters<FuseServer['dispatch']>): void {
        const [bytes, , done, payload] = args;
        const release = held;
        held = null;
        const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        // fuse_read_in.size comes 16 bytes after the 40-byte in header.
        const views = view.getUint32(4, true) === Opcode.READ && !release ? payload?.(view.getUint32(56, true)) : null;
        if (views) {
          views[0]!.fill(0x61);
          const unique = view.getBigUint64(8, true);
          held = () => done({ unique, error: 0, parts: [], length: views[0]!.length, inPlace: true });
        } else super.dispatch(...args);
        release?.();
      }
    }
    mount = DevFuseMount.mount(new HoldingServer(new MemoryVfs(), { log: silentLogger }), { mountpoint: dir, readOnly: false, fsName: 'memtest', log });
    await writeFile(join(dir, 'f'), new Uint8Array(4096).fill(0x62));
    const reader = run('dd', [`if=${join(dir, 'f')}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct']).then(() => 'read', (e: { stderr?: string }) => String(e.stderr));
    while (held === null) await new Promise((r) => setTimeout(r, 10));
    await readdir(dir); // the next request: it may take the room, and releases the held reply
    expect(await reader).to.match(/Input\/output error/);
    expect(errors).to.deep.equal(['an in-place READ reply came after its room was reused']);
  });

  it('ends the session when unmounted from outside', async () => {
    await run('umount', ['-l', dir]);
    await mount!.ended;
  });
});
