// The long-running commands as a user runs them: configuration from the environment,
// `serve` (what `npm start` runs), clean shutdown on SIGTERM/SIGINT, and logs that are
// JSON lines on stderr. vhost-s3 runs as a child process through bin/vhost-s3.js; the
// QEMU-free frontend (BlkClient) or `vhost-s3 bench blk` plays the VM.
import { expect } from 'chai';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { BlkClient } from '../../src/frontend/blk-client.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { O_CREAT, O_RDONLY, O_WRONLY, S_IFDIR, S_IFREG } from '../../src/fuse/abi.js';
import { createObjectStore } from '../../src/backends/locator.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { CliProcess, isSocket, runCli, startBlkServer, useCliServer } from '../support/cli.js';
import { makeRawFile, patternBytes } from '../support/tmp.js';

const MiB = 1 << 20;

/** Every stderr line is a JSON object with time, level and msg. */
function expectJsonLogs(p: CliProcess): Record<string, unknown>[] {
  let lines: Record<string, unknown>[] = [];
  expect(() => (lines = p.logLines()), p.describe()).not.to.throw();
  for (const l of lines) {
    expect(l, JSON.stringify(l)).to.include.keys('time', 'level', 'msg');
    expect(['debug', 'info', 'warn', 'error']).to.include(l.level);
    expect(Number.isNaN(Date.parse(String(l.time))), String(l.time)).to.equal(false);
  }
  return lines;
}

/** Bytes allocated on disk under `root` (st_blocks), to check that a new disk is sparse. */
function allocatedBytes(root: string): number {
  let total = 0;
  for (const e of readdirSync(root, { withFileTypes: true })) {
    const p = join(root, e.name);
    const st = lstatSync(p);
    if (e.isDirectory()) total += allocatedBytes(p);
    else if (st.isFile()) total += st.blocks * 512;
  }
  return total;
}

describe('cli: configuration from the environment', function () {
  this.timeout(60_000);
  const fx = useCliServer('vhost-s3-cli-');

  it('blk takes every setting from VHOST_S3_* variables', async () => {
    const raw = makeRawFile(fx.dir.file('disk.raw'), 16 * MiB);
    const sock = fx.dir.file('env.sock');
    fx.server = new CliProcess(['blk'], {
      env: {
        VHOST_S3_SOCKET: sock, VHOST_S3_IMAGE: `file:${raw}`, VHOST_S3_QUEUES: '2', VHOST_S3_SERIAL: 'FROM-ENV',
        VHOST_S3_READONLY: 'true', VHOST_S3_IO_ENGINE: 'sync', VHOST_S3_LOG_LEVEL: 'warn',
      },
    });
    await fx.server.waitForSocket(sock);
    fx.client = await BlkClient.connect(sock, { queues: 4 });
    expect(fx.client.numQueues).to.equal(2);
    expect(fx.client.readOnly).to.equal(true);
    expect(fx.client.capacity).to.equal(16 * MiB);
    expect((await fx.client.getIdAsync()).id).to.equal('FROM-ENV');
    await fx.client.close();
    fx.client = null;
    const st = await fx.server.stop('SIGTERM');
    expect(st.code, fx.server.describe()).to.equal(0);
    // --log-level warn from the environment: a clean run logs nothing.
    expect(fx.server.stderr, 'no info lines at level warn').to.equal('');
  });

  it('flags win over the environment', async () => {
    const raw = makeRawFile(fx.dir.file('disk.raw'), 16 * MiB);
    const sock = fx.dir.file('flag.sock');
    fx.server = await startBlkServer({
      socket: sock, image: `file:${raw}`, serial: 'FROM-FLAG', queues: 1,
      env: { VHOST_S3_SOCKET: fx.dir.file('not-this.sock'), VHOST_S3_SERIAL: 'FROM-ENV', VHOST_S3_QUEUES: '3', VHOST_S3_READONLY: 'true' },
      extra: ['--no-readonly'],
    });
    expect(existsSync(fx.dir.file('not-this.sock'))).to.equal(false);
    fx.client = await BlkClient.connect(sock, { queues: 4 });
    expect(fx.client.numQueues).to.equal(1);
    expect(fx.client.readOnly).to.equal(false);
    expect((await fx.client.getIdAsync()).id).to.equal('FROM-FLAG');
  });

  it('bench blk takes its settings from VHOST_S3_BENCH_* variables', async () => {
    const raw = makeRawFile(fx.dir.file('disk.raw'), 16 * MiB);
    const sock = fx.dir.file('b.sock');
    fx.server = await startBlkServer({ socket: sock, image: `file:${raw}`, queues: 2, logLevel: 'warn' });
    const r = await runCli(['bench', 'blk'], {
      env: {
        VHOST_S3_BENCH_SOCKET: sock, VHOST_S3_BENCH_RW: 'write', VHOST_S3_BENCH_BS: '64k', VHOST_S3_BENCH_SIZE: '2M',
        VHOST_S3_BENCH_QUEUES: '2', VHOST_S3_BENCH_IODEPTH: '4', VHOST_S3_BENCH_JSON: 'true', VHOST_S3_LOG_LEVEL: 'warn',
      },
    });
    expect(r.code, r.stderr).to.equal(0);
    const res = JSON.parse(r.stdout) as { ios: number; errors: number };
    expect(res.errors).to.equal(0);
    expect(res.ios).to.equal(32); // 2 MiB in 64 KiB requests
  });
});

describe('cli: shutdown on SIGTERM and SIGINT', function () {
  this.timeout(60_000);
  const fx = useCliServer('vhost-s3-cli-');

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`an idle server exits 0 on ${signal} and removes its socket`, async () => {
      const raw = makeRawFile(fx.dir.file('disk.raw'), 16 * MiB);
      const sock = fx.dir.file('idle.sock');
      fx.server = await startBlkServer({ socket: sock, image: `file:${raw}` });
      const st = await fx.server.stop(signal);
      expect(st.code, fx.server.describe()).to.equal(0);
      expect(st.signal).to.equal(null);
      expect(st.ms, 'shutdown time').to.be.below(5000);
      expect(existsSync(sock), 'socket removed').to.equal(false);
      const logs = expectJsonLogs(fx.server);
      expect(logs.some((l) => l.msg === 'shutting down' && l.signal === signal), fx.server.stderr).to.equal(true);
    });
  }

  it('exits 0 on SIGTERM while a frontend is connected; its completed writes are in the file', async () => {
    const raw = makeRawFile(fx.dir.file('disk.raw'), 16 * MiB);
    const sock = fx.dir.file('busy.sock');
    fx.server = await startBlkServer({ socket: sock, image: `file:${raw}`, queues: 2 });
    fx.client = await BlkClient.connect(sock, { queues: 2 });
    const data = patternBytes(5, 8192);
    const b = fx.client.allocBuffer(data.length);
    b.bytes.set(data);
    expect(await fx.client.writeAsync(1, 4096, b)).to.equal(BlkStatus.Ok);
    const st = await fx.server.stop('SIGTERM');
    expect(st.code, fx.server.describe()).to.equal(0);
    expect(st.ms).to.be.below(5000);
    expect(isSocket(sock)).to.equal(false);
    // The completed write was flushed before exit.
    expect(readFileSync(raw).subarray(4096, 4096 + 8192).equals(Buffer.from(data))).to.equal(true);
    expectJsonLogs(fx.server);
  });

  it('a server restarted on the same socket path replaces the stale socket file of a killed one', async () => {
    const raw = makeRawFile(fx.dir.file('disk.raw'), 16 * MiB);
    const sock = fx.dir.file('stale.sock');
    fx.server = await startBlkServer({ socket: sock, image: `file:${raw}` });
    await fx.server.kill(); // SIGKILL: the socket file stays behind
    expect(existsSync(sock)).to.equal(true);
    fx.server = await startBlkServer({ socket: sock, image: `file:${raw}` });
    fx.client = await BlkClient.connect(sock);
    expect(fx.client.capacity).to.equal(16 * MiB);
  });

  it('refuses to take over the socket of a server that is still running (exit 2)', async () => {
    const raw = makeRawFile(fx.dir.file('disk.raw'), 16 * MiB);
    const raw2 = makeRawFile(fx.dir.file('disk2.raw'), 16 * MiB);
    const sock = fx.dir.file('taken.sock');
    fx.server = await startBlkServer({ socket: sock, image: `file:${raw}` });
    const r = await runCli(['blk', '--socket', sock, '--image', `file:${raw2}`]);
    expect(r.code, r.stderr).to.equal(2);
    expect(r.stderr.trim().split('\n')).to.have.length(1);
    expect(r.stderr).to.match(/in use|EADDRINUSE/);
    // The first server still serves.
    fx.client = await BlkClient.connect(sock);
    expect(fx.client.capacity).to.equal(16 * MiB);
  });
});

describe('cli: vhost-s3 serve (npm start)', function () {
  this.timeout(90_000);
  const fx = useCliServer('vhost-s3-serve-');

  async function startServe(args: string[], o: { env?: Record<string, string>; cwd?: string } = {}): Promise<CliProcess> {
    const p = new CliProcess(['serve', ...args], o);
    await p.waitFor('the QEMU arguments on stdout', (out) => out.includes('Press Ctrl-C'));
    return p;
  }

  it('creates a sparse disk of --disk-size on first start, prints how to attach it, and reuses it on the next start', async () => {
    const data = fx.dir.file('state/vhost-s3');
    const sock = join(data, 'disk0.sock');
    fx.server = await startServe(['--data-dir', data, '--disk-size', '64M']);
    const out = fx.server.stdout;
    expect(out).to.include(`on ${sock}`);
    expect(out).to.include(`(${64 * MiB} bytes)`);
    expect(out).to.include(`-chardev socket,id=d0,path=${sock}`);
    expect(out).to.include('-device vhost-user-blk-pci,chardev=d0');
    expect(out).to.match(/-object memory-backend-memfd,id=mem,size=\S+,share=on -numa node,memdev=mem/);
    expect(isSocket(sock)).to.equal(true);
    expect(allocatedBytes(data), 'bytes stored for a new, empty 64 MiB disk').to.be.below(MiB);

    // Reachable with bench blk.
    const r = await runCli(['bench', 'blk', '--socket', sock, '--rw', 'randwrite', '--bs', '16k', '--size', '1M', '--json', '--log-level', 'warn']);
    expect(r.code, r.stderr).to.equal(0);
    expect((JSON.parse(r.stdout) as { errors: number }).errors).to.equal(0);

    fx.client = await BlkClient.connect(sock);
    expect(fx.client.capacity).to.equal(64 * MiB);
    expect((await fx.client.getIdAsync()).id).to.equal('vhost-s3-disk0');
    const pattern = patternBytes(77, 128 * 1024);
    const b = fx.client.allocBuffer(pattern.length);
    b.bytes.set(pattern);
    expect(await fx.client.writeAsync(0, 40 * MiB, b)).to.equal(BlkStatus.Ok);
    expect(await fx.client.flushAsync()).to.equal(BlkStatus.Ok);
    await fx.client.close();
    fx.client = null;
    const st = await fx.server.stop('SIGTERM');
    expect(st.code, fx.server.describe()).to.equal(0);
    expect(existsSync(sock)).to.equal(false);
    expectJsonLogs(fx.server);

    // Second start: the same disk, whatever --disk-size says now.
    fx.server = await startServe(['--data-dir', data, '--disk-size', '128M']);
    expect(fx.server.stdout).to.include(`(${64 * MiB} bytes)`);
    fx.client = await BlkClient.connect(sock);
    expect(fx.client.capacity).to.equal(64 * MiB);
    const rb = fx.client.allocBuffer(pattern.length);
    expect(await fx.client.readAsync(0, 40 * MiB, rb)).to.equal(BlkStatus.Ok);
    expect(Buffer.from(rb.bytes).equals(Buffer.from(pattern)), 'data written before the restart').to.equal(true);
    await fx.client.close();
    fx.client = null;
    expect((await fx.server.stop('SIGINT')).code, fx.server.describe()).to.equal(0);
    expectJsonLogs(fx.server);
  });

  it('also serves store/share as a virtio-fs share on fs.sock (tag share): what a client writes is in the store and there after a restart', async () => {
    const data = fx.dir.file('data');
    const fsSock = join(data, 'fs.sock');
    const diskSock = join(data, 'disk0.sock');
    fx.server = await startServe(['--data-dir', data, '--disk-size', '16M']);
    expect(fx.server.stdout).to.include(`on ${fsSock}`);
    expect(fx.server.stdout).to.include(`-chardev socket,id=f0,path=${fsSock} -device vhost-user-fs-pci,chardev=f0,tag=share`);
    expect(fx.server.stdout).to.include(`-chardev socket,id=d0,path=${diskSock} -device vhost-user-blk-pci,chardev=d0`);
    expect(fx.server.stdout).to.include('mount -t virtiofs share /mnt');
    expect(isSocket(fsSock)).to.equal(true);
    const text = new TextEncoder().encode('written through the share\n');
    let fc = await FuseClient.connect(fsSock);
    try {
      await fc.init();
      const root = await fc.getattr(1);
      expect(root.attr.mode).to.equal(S_IFDIR | 0o755);
      const d = await fc.mkdir(1, 'docs', 0o750);
      const { entry, fh } = await fc.create(d.nodeid, 'readme.txt', O_CREAT | O_WRONLY, S_IFREG | 0o640);
      await fc.write(entry.nodeid, fh, 0, text);
      await fc.release(entry.nodeid, fh);
    } finally {
      await fc.close();
    }
    // The disk is served at the same time.
    fx.client = await BlkClient.connect(diskSock);
    expect(fx.client.capacity).to.equal(16 * MiB);
    await fx.client.close();
    fx.client = null;
    const st = await fx.server.stop('SIGTERM');
    expect(st.code, fx.server.describe()).to.equal(0);
    expect(existsSync(fsSock), 'fs socket removed').to.equal(false);
    expect(existsSync(diskSock), 'disk socket removed').to.equal(false);
    expectJsonLogs(fx.server);
    const { store } = await createObjectStore(`file:${join(data, 'store')}`);
    try {
      const obj = await store.get('share/docs/readme.txt');
      expect(Buffer.from(obj.body).equals(Buffer.from(text))).to.equal(true);
      expect(obj.metadata.mode).to.equal(String(S_IFREG | 0o640));
      expect((await store.head('share/docs/'))?.metadata.mode).to.equal(String(S_IFDIR | 0o750));
    } finally {
      await store.close();
    }

    fx.server = await startServe(['--data-dir', data]);
    fc = await FuseClient.connect(fsSock);
    try {
      await fc.init();
      const d = await fc.lookup(1, 'docs');
      const f = await fc.lookup(d.nodeid, 'readme.txt');
      const o = await fc.open(f.nodeid, O_RDONLY);
      expect(Buffer.from(await fc.read(f.nodeid, o.fh, 0, 4096)).equals(Buffer.from(text))).to.equal(true);
      await fc.release(f.nodeid, o.fh);
    } finally {
      await fc.close();
    }
    expect((await fx.server.stop('SIGINT')).code, fx.server.describe()).to.equal(0);
    expect(existsSync(fsSock)).to.equal(false);
  });

  it('a SIGTERM sent as soon as the disk socket exists exits 0 and removes both sockets (3 tries)', async () => {
    const failures: string[] = [];
    const data = fx.dir.file('early');
    for (let i = 0; i < 3; i++) {
      const p = new CliProcess(['serve', '--data-dir', data, '--disk-size', '16M', '--log-level', 'warn']);
      fx.server = p;
      const sock = join(data, 'disk0.sock');
      while (!isSocket(sock) && p.running) await new Promise((r) => setImmediate(r));
      const st = await p.stop('SIGTERM');
      const left = ['disk0.sock', 'fs.sock'].filter((f) => existsSync(join(data, f)));
      if (st.code !== 0 || left.length > 0) failures.push(`try ${i}: exit ${st.code ?? st.signal}, left behind: ${left.join(' ') || 'nothing'}`);
    }
    expect(failures).to.deep.equal([]);
  });

  it('without --data-dir uses ./data of the working directory; VHOST_S3_DISK_SIZE sets the size', async () => {
    fx.server = await startServe([], { cwd: fx.dir.path, env: { VHOST_S3_DISK_SIZE: '16M' } });
    const sock = fx.dir.file('data/disk0.sock');
    expect(fx.server.stdout).to.include(`on ${sock}`);
    fx.client = await BlkClient.connect(sock);
    expect(fx.client.capacity).to.equal(16 * MiB);
    await fx.client.close();
    fx.client = null;
    expect((await fx.server.stop()).code).to.equal(0);
  });

  it('VHOST_S3_DATA_DIR chooses the data directory', async () => {
    const data = fx.dir.file('from-env');
    fx.server = await startServe([], { env: { VHOST_S3_DATA_DIR: data, VHOST_S3_DISK_SIZE: '16M' } });
    expect(isSocket(join(data, 'disk0.sock'))).to.equal(true);
    expect((await fx.server.stop()).code).to.equal(0);
  });
});
