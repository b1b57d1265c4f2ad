// `vhost-s3 fs` and `vhost-s3 mount` as a user runs them: help, configuration errors
// (exit 2, one line on stderr, nothing served), the printed QEMU arguments, the defaults
// for objects without metadata, --readonly, a prefix of a bucket and a local store,
// shutdown on SIGTERM/SIGINT (socket removed, open files stored), and `mount` on the host.
// The gateway runs as a child process through bin/vhost-s3.js, on s3rver or a `file:`
// store; our QEMU-free FUSE client (src/frontend/fuse-client.ts) plays the guest.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { promisify } from 'node:util';

import { FuseClient } from '../../src/frontend/fuse-client.js';
import { GETATTR_IN_SIZE, O_CREAT, O_RDONLY, O_RDWR, O_WRONLY, Opcode, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../../src/fuse/abi.js';
import { S3Store } from '../../src/backends/s3-store.js';
import { createObjectStore } from '../../src/backends/locator.js';
import { schemas, type OptionSpec } from '../../src/config.js';
import { ErrnoError } from '../../src/util/errors.js';
import { CliProcess, explain, isSocket, runCli } from '../support/cli.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { TmpDir, patternBytes } from '../support/tmp.js';
import { errnoCode } from '../support/errno.js';
import { freePort as closedPort } from '../support/metrics.js';

const run = promisify(execFile);
const isRoot = process.getuid?.() === 0;
const BUCKET = 'bkt';
const te = new TextEncoder();
const td = new TextDecoder();

describe('cli: vhost-s3 fs and mount', function () {
  this.timeout(60_000);
  let s3: S3rver;
  let store: S3Store;
  let dir: TmpDir;
  let procs: CliProcess[] = [];
  let clients: FuseClient[] = [];

  before(async function () {
    this.timeout(60_000);
    s3 = await startS3rver({ buckets: [BUCKET] });
    store = new S3Store({ bucket: BUCKET, endpoint: s3.endpoint, credentials: s3.credentials, region: 'us-east-1' });
  });
  after(async () => {
    await store?.close();
    await s3?.stop();
  });
  beforeEach(() => {
    dir = new TmpDir('vhost-s3-cli-fs-');
  });
  afterEach(async () => {
    for (const c of clients) await c.close().catch(() => undefined);
    clients = [];
    for (const p of procs) await p.kill();
    procs = [];
    dir.remove();
  });

  /** `vhost-s3 fs ARGS` with s3rver's environment, resolved once it printed the QEMU arguments and listens. */
  async function startFs(args: string[], env: Record<string, string> = {}): Promise<CliProcess> {
    const p = new CliProcess(['fs', ...args], { env: { ...s3.env, ...env } });
    procs.push(p);
    await p.waitFor('the QEMU arguments on stdout', (out) => out.includes('guest: mount'));
    return p;
  }

  async function connect(sock: string, requestQueues = 1): Promise<FuseClient> {
    const c = await FuseClient.connect(sock, { requestQueues, maxIo: 256 * 1024 });
    clients.push(c);
    await c.init();
    return c;
  }

  /**
   * Runs `vhost-s3 ARGS` expecting a configuration error: exit 2, exactly one line on
   * stderr matching `pattern`, nothing on stdout, and no socket. A gateway that starts
   * serving instead is stopped at once (the test fails without waiting for a timeout).
   */
  async function expectConfigError(args: string[], pattern: RegExp, env: Record<string, string> = {}, socket?: string): Promise<void> {
    const p = new CliProcess(args, { env: { ...s3.env, ...env } });
    procs.push(p);
    const serving = p.waitFor('serving', (out) => out.includes('is serving'), 45_000).then(() => true, () => false);
    const started = await Promise.race([serving, p.exited.then(() => false)]);
    if (started) {
      await p.kill();
      expect.fail(`vhost-s3 ${args.join(' ')} started serving instead of refusing the configuration with exit 2\n${p.describe()}`);
    }
    const st = await p.exited;
    expect(st.code, p.describe()).to.equal(2);
    const lines = p.stderr.trimEnd().split('\n');
    expect(lines, p.describe()).to.have.length(1);
    expect(lines[0], p.describe()).to.match(/^vhost-s3: /);
    expect(lines[0], p.describe()).to.match(pattern);
    expect(p.stderr, 'no stack trace').not.to.match(/^\s+at /m);
    expect(p.stdout, 'nothing printed on stdout').to.equal('');
    if (socket !== undefined) expect(existsSync(socket), 'no socket left behind').to.equal(false);
  }

  describe('help', () => {
    for (const command of ['fs', 'mount'] as const) {
      it(`vhost-s3 ${command} --help lists every option with its environment variable`, async () => {
        const r = await runCli([command, '--help']);
        expect(r.code, explain(r)).to.equal(0);
        expect(r.stderr).to.equal('');
        expect(r.stdout).to.match(new RegExp(`^usage: vhost-s3 ${command} `));
        for (const spec of Object.values(schemas[command]) as OptionSpec[]) {
          expect(r.stdout, `--${spec.arg}`).to.match(new RegExp(`^  --${spec.arg}\\b`, 'm'));
          expect(r.stdout, spec.env).to.include(`env ${spec.env}`);
        }
        for (const w of ['--bucket', 'VHOST_S3_BUCKET', '--readonly', '--uid', '--gid', '--file-mode', '--dir-mode', '--attr-timeout', '--endpoint', 'VHOST_S3_ENDPOINT']) {
          expect(r.stdout).to.include(w);
        }
        if (command === 'fs') for (const w of ['--socket', 'VHOST_S3_SOCKET', '--tag', 'VHOST_S3_TAG', '--queues', 'VHOST_S3_QUEUES']) expect(r.stdout).to.include(w);
        if (command === 'mount') expect(r.stdout).to.include('MOUNTPOINT');
      });
    }

    it('vhost-s3 --help lists fs and mount', async () => {
      const r = await runCli(['--help']);
      expect(r.code, explain(r)).to.equal(0);
      expect(r.stdout).to.match(/^ {2}fs\s+serve a bucket as a virtio-fs device/m);
      expect(r.stdout).to.match(/^ {2}mount\s+mount a bucket/m);
    });
  });

  describe('configuration errors: exit 2, one line', () => {
    const store = (): string => `file:${dir.path}`;
    it('no --socket', () => expectConfigError(['fs', '--bucket', store()], /no socket given/));
    it('no --bucket', () => expectConfigError(['fs', '--socket', dir.file('s.sock')], /no bucket given/, {}, dir.file('s.sock')));
    it('--file-mode 999 and --dir-mode 8', async () => {
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--file-mode', '999'], /--file-mode.*999/, {}, dir.file('s.sock'));
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--dir-mode', '8'], /--dir-mode.*"8"/, {}, dir.file('s.sock'));
    });
    it('a bucket that does not exist on the endpoint', () =>
      expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', 's3://no-such-bucket'], /no-such-bucket/, {}, dir.file('s.sock')));
    it('an endpoint where nothing listens', async () => {
      const port = await closedPort();
      const t0 = Date.now();
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', `s3://${BUCKET}`, '--endpoint', `http://127.0.0.1:${port}`], new RegExp(`127\\.0\\.0\\.1:${port}|refused|ECONNREFUSED`, 'i'), {}, dir.file('s.sock'));
      expect(Date.now() - t0, 'time to give up').to.be.below(30_000);
    });
    // (s3rver checks the access key id but not the signature: a wrong secret would be let in.)
    it('wrong S3 credentials (an unknown access key id)', () =>
      expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', `s3://${BUCKET}`], /access denied.*credentials/i, { AWS_ACCESS_KEY_ID: 'NOT-A-KEY' }, dir.file('s.sock')));
    it('a bad locator, and a local store directory that does not exist', async () => {
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', 'http://example.com/x'], /locator|scheme/);
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', `file:${dir.file('missing')}`], /does not exist|missing/);
    });
    it('a socket in a directory that does not exist', () =>
      expectConfigError(['fs', '--socket', dir.file('nodir/s.sock'), '--bucket', store()], /cannot listen on .*nodir\/s\.sock/));
    it('an unknown option and an extra argument', async () => {
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--tga', 'x'], /unknown option --tga/);
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), 'extra'], /unexpected argument "extra"/);
    });
    it('an unknown option starting with --no- is named as typed (--no-such-option, --no-readonyl)', async () => {
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--no-such-option'], /unknown option --no-such-option\b/);
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--no-readonyl'], /unknown option --no-readonyl\b/);
    });
    // Values convict's Number format lets through (NaN, negative, fractional, > 2^32-1).
    it('a timeout that is not a number (--attr-timeout abc: attributes would be cached forever)', () =>
      expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--attr-timeout', 'abc'], /--attr-timeout/, {}, dir.file('s.sock')));
    it('a negative timeout (--list-timeout -1) and one from the environment (VHOST_S3_ENTRY_TIMEOUT=soon)', async () => {
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--list-timeout', '-1'], /--list-timeout/, {}, dir.file('s.sock'));
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store()], /--entry-timeout|VHOST_S3_ENTRY_TIMEOUT/, { VHOST_S3_ENTRY_TIMEOUT: 'soon' }, dir.file('s.sock'));
    });
    it('a uid or gid that is not a 32-bit id (--uid abc, --uid 4294967296, --gid 1.5)', async () => {
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--uid', 'abc'], /--uid/, {}, dir.file('s.sock'));
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--uid', '4294967296'], /--uid/, {}, dir.file('s.sock'));
      await expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--gid', '1.5'], /--gid/, {}, dir.file('s.sock'));
    });
    it('more request queues than virtio allows (--queues 5000)', () =>
      expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--queues', '5000'], /queues/, {}, dir.file('s.sock')));
    it('tuning values the file system cannot work with (--cache-block-size 1000, --part-size 0, --multipart-threshold 6G, --upload-concurrency 0, VHOST_S3_READ_AHEAD=lots)', async () => {
      const base = ['fs', '--socket', dir.file('s.sock'), '--bucket', store()];
      await expectConfigError([...base, '--cache-block-size', '1000'], /--cache-block-size must be a power of two/, {}, dir.file('s.sock'));
      await expectConfigError([...base, '--part-size', '0'], /--part-size must be/, {}, dir.file('s.sock'));
      await expectConfigError([...base, '--multipart-threshold', '6G'], /--multipart-threshold must be at most 5G/, {}, dir.file('s.sock'));
      await expectConfigError([...base, '--upload-concurrency', '0'], /--upload-concurrency/, {}, dir.file('s.sock'));
      await expectConfigError([...base], /invalid size "lots"|--read-ahead|VHOST_S3_READ_AHEAD/, { VHOST_S3_READ_AHEAD: 'lots' }, dir.file('s.sock'));
      await expectConfigError(['mount', '--bucket', store(), '--meta-concurrency', '1.5', dir.path], /--meta-concurrency/);
    });
    it('a --temp-dir that does not exist (write buffers would fail later with EIO)', () =>
      expectConfigError(['fs', '--socket', dir.file('s.sock'), '--bucket', store(), '--temp-dir', dir.file('no-such-dir')], /--temp-dir|no-such-dir/, {}, dir.file('s.sock')));
    it('a second gateway on the socket of a running one', async () => {
      const sock = dir.file('taken.sock');
      await startFs(['--socket', sock, '--bucket', store()]);
      await expectConfigError(['fs', '--socket', sock, '--bucket', store()], /in use|EADDRINUSE/);
      expect(isSocket(sock), 'the first gateway keeps its socket').to.equal(true);
      const c = await connect(sock);
      expect((await c.getattr(1)).attr.mode & S_IFMT).to.equal(S_IFDIR);
    });

    describe('vhost-s3 mount', () => {
      it('no mountpoint', () => expectConfigError(['mount', '--bucket', store()], /missing MOUNTPOINT/));
      it('no bucket', () => expectConfigError(['mount', dir.path], /no bucket given/));
      it('two mountpoints', () => expectConfigError(['mount', '--bucket', store(), dir.path, dir.path], /unexpected argument/));
      it('a mountpoint that does not exist', async function () {
        if (!isRoot || !existsSync('/dev/fuse')) this.skip();
        await expectConfigError(['mount', '--bucket', store(), dir.file('nope')], /cannot mount on .*nope/);
      });
      it('a bucket that does not exist', () => expectConfigError(['mount', '--bucket', 's3://no-such-bucket', dir.path], /no-such-bucket/));
    });
  });

  describe('serving', () => {
    it('prints the QEMU arguments with the socket, the tag and the request queues; settings come from VHOST_S3_* too', async () => {
      const sock = dir.file('fs.sock');
      const p = await startFs(['--socket', sock, '--bucket', `s3://${BUCKET}/printed`, '--tag', 'mydata', '--queues', '3']);
      expect(p.stdout).to.include(`serving s3://${BUCKET}/printed as virtio-fs on ${sock}`);
      expect(p.stdout).to.match(/-object memory-backend-memfd,id=mem,size=\S+,share=on -numa node,memdev=mem/);
      expect(p.stdout).to.include(`-chardev socket,id=f0,path=${sock}`);
      expect(p.stdout).to.include('-device vhost-user-fs-pci,chardev=f0,tag=mydata,num-request-queues=3');
      expect(p.stdout).to.include('mount -t virtiofs mydata /mnt');
      expect(isSocket(sock)).to.equal(true);
      // The device has hiprio + 3 request queues.
      const c = await connect(sock, 8);
      expect(c.requestQueues).to.equal(3);
      await Promise.all([1, 2, 3].map(async (q) => expect((await c.request(Opcode.GETATTR, 1, [new Uint8Array(GETATTR_IN_SIZE)], { queue: q })).error).to.equal(0)));
      await c.close();
      expect((await p.stop('SIGTERM')).code, explain(p)).to.equal(0);

      const sock2 = dir.file('env.sock');
      const q = await startFs([], { VHOST_S3_SOCKET: sock2, VHOST_S3_BUCKET: `s3://${BUCKET}`, VHOST_S3_TAG: 'fromenv', VHOST_S3_LOG_LEVEL: 'warn' });
      expect(q.stdout).to.include(`path=${sock2}`);
      expect(q.stdout).to.include('tag=fromenv');
      expect(q.stdout).not.to.include('num-request-queues');
      expect((await q.stop('SIGINT')).code, explain(q)).to.equal(0);
      expect(q.stderr, 'nothing logged at warn').to.equal('');
    });

    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      it(`exits 0 on ${signal}, removes the socket, logs JSON lines, and stores what a connected client wrote but had not closed`, async () => {
        const sock = dir.file('sig.sock');
        const p = await startFs(['--socket', sock, '--bucket', `s3://${BUCKET}/sig-${signal}`]);
        const c = await connect(sock);
        const { entry, fh } = await c.create(1, 'open.bin', O_CREAT | O_RDWR, S_IFREG | 0o640);
        const data = patternBytes(3, 200_000);
        expect(await c.write(entry.nodeid, fh, 0, data)).to.equal(data.length);
        // No FLUSH, no RELEASE: the gateway stops with the file open.
        const st = await p.stop(signal);
        expect(st.code, explain(p)).to.equal(0);
        expect(st.signal).to.equal(null);
        expect(st.ms, 'shutdown time').to.be.below(10_000);
        expect(existsSync(sock), 'socket removed').to.equal(false);
        const logs = p.logLines();
        for (const l of logs) expect(l, JSON.stringify(l)).to.include.keys('time', 'level', 'msg');
        expect(logs.some((l) => l.msg === 'shutting down' && l.signal === signal), p.stderr).to.equal(true);
        const obj = await store.get(`sig-${signal}/open.bin`);
        expect(Buffer.from(obj.body).equals(Buffer.from(data)), 'bytes of the open file').to.equal(true);
        expect(obj.metadata.mode).to.equal(String(S_IFREG | 0o640));
      });
    }

    it('a SIGTERM sent as soon as the socket exists still exits 0 and removes the socket (8 tries)', async () => {
      const failures: string[] = [];
      for (let i = 0; i < 8; i++) {
        const sock = dir.file(`early-${i}.sock`);
        // (a race: the signal must arrive between listen() and the handler; 8 tries catch it reliably)
        const p = new CliProcess(['fs', '--socket', sock, '--bucket', `file:${dir.path}`, '--log-level', 'warn']);
        procs.push(p);
        while (!isSocket(sock) && p.running) await new Promise((r) => setImmediate(r));
        const st = await p.stop('SIGTERM');
        if (st.code !== 0 || existsSync(sock)) failures.push(`try ${i}: exit ${st.code ?? st.signal}, socket ${existsSync(sock) ? 'left behind' : 'removed'}`);
      }
      expect(failures, 'SIGTERM right after the socket appeared').to.deep.equal([]);
    });

    it('objects without metadata get --uid/--gid/--file-mode/--dir-mode; without --uid/--gid, this process\'s ids', async () => {
      await store.put('defaults/plain.txt', te.encode('plain'));
      await store.put('defaults/implied/x.txt', te.encode('x'));
      await store.put('defaults/link', te.encode('plain.txt'), { metadata: { mode: String(S_IFLNK | 0o777) } });
      const sock = dir.file('d.sock');
      await startFs(['--socket', sock, '--bucket', `s3://${BUCKET}/defaults`, '--uid', '123', '--gid', '456', '--file-mode', '0600', '--dir-mode', '0700']);
      const c = await connect(sock);
      const f = await c.lookup(1, 'plain.txt');
      expect(f.attr.mode).to.equal(S_IFREG | 0o600);
      expect([f.attr.uid, f.attr.gid]).to.deep.equal([123, 456]);
      expect(f.attr.size).to.equal(5);
      const d = await c.lookup(1, 'implied');
      expect(d.attr.mode).to.equal(S_IFDIR | 0o700);
      expect([d.attr.uid, d.attr.gid]).to.deep.equal([123, 456]);
      const l = await c.lookup(1, 'link');
      expect(l.attr.mode & S_IFMT).to.equal(S_IFLNK);
      expect(await c.readlink(l.nodeid)).to.equal('plain.txt');
      const root = await c.getattr(1);
      expect(root.attr.mode).to.equal(S_IFDIR | 0o700);

      const sock2 = dir.file('d2.sock');
      await startFs(['--socket', sock2, '--bucket', `s3://${BUCKET}/defaults`]);
      const c2 = await connect(sock2);
      const f2 = await c2.lookup(1, 'plain.txt');
      expect(f2.attr.mode).to.equal(S_IFREG | 0o644);
      expect([f2.attr.uid, f2.attr.gid]).to.deep.equal([process.getuid!(), process.getgid!()]);
      expect((await c2.lookup(1, 'implied')).attr.mode).to.equal(S_IFDIR | 0o755);
    });

    it('--attr-timeout/--list-timeout: a change made by another writer is seen once they ran out', async () => {
      await store.put('ttl/f.txt', te.encode('v1'));
      const sock = dir.file('ttl.sock');
      await startFs(['--socket', sock, '--bucket', `s3://${BUCKET}/ttl`, '--attr-timeout', '0.3', '--entry-timeout', '0.3', '--list-timeout', '0.3', '--negative-timeout', '0.3']);
      const c = await connect(sock);
      const f = await c.lookup(1, 'f.txt');
      expect(f.attr.size).to.equal(2);
      expect(f.attrValidMs).to.equal(300);
      expect(f.entryValidMs).to.equal(300);
      // A missing name: ENOENT, or a negative entry (nodeid 0) cached for --negative-timeout.
      const missing = await c.lookup(1, 'g.txt').then((e) => (e.nodeid === 0 ? `negative ${e.entryValidMs}` : 'found'), (err: unknown) => (err as ErrnoError).code);
      expect(missing).to.be.oneOf(['ENOENT', 'negative 300']);
      await store.put('ttl/f.txt', te.encode('version 2'));
      await store.put('ttl/g.txt', te.encode('g'));
      await new Promise((r) => setTimeout(r, 800));
      expect((await c.getattr(f.nodeid)).attr.size).to.equal(9);
      expect((await c.lookup(1, 'g.txt')).attr.size).to.equal(1);
      expect((await c.listdir(1)).map((e) => e.name).filter((n) => n !== '.' && n !== '..').sort()).to.deep.equal(['f.txt', 'g.txt']);
    });

    it('--multipart-threshold and --part-size reach the uploads: a 12 MiB file goes up in three 5 MiB parts, a 6 MiB one in one PUT', async () => {
      const proxy = await FaultProxy.start(s3.port);
      try {
        proxy.record = true;
        const sock = dir.file('mp.sock');
        await startFs(['--socket', sock, '--bucket', `s3://${BUCKET}/mp`, '--endpoint', proxy.endpoint, '--multipart-threshold', '6M', '--part-size', '5M']);
        const c = await connect(sock);
        const big = patternBytes(12, 12 * 1024 * 1024);
        const small = patternBytes(13, 6 * 1024 * 1024);
        for (const [name, body] of [['big', big], ['small', small]] as const) {
          const { entry, fh } = await c.create(1, name, O_CREAT | O_WRONLY, S_IFREG | 0o644);
          for (let off = 0; off < body.length; off += 256 * 1024) await c.write(entry.nodeid, fh, off, body.subarray(off, off + 256 * 1024));
          await c.release(entry.nodeid, fh);
        }
        const uploads = (name: string): string[] => proxy.seen
          .filter((r) => (r.method === 'PUT' || r.method === 'POST') && new URL(r.url, 'http://x').pathname === `/${BUCKET}/mp/${name}`)
          .map((r) => `${r.method} ${[...new URL(r.url, 'http://x').searchParams.keys()].filter((k) => k !== 'x-id').join(',')}`);
        expect(uploads('big')).to.deep.equal(['POST uploads', 'PUT partNumber,uploadId', 'PUT partNumber,uploadId', 'PUT partNumber,uploadId', 'POST uploadId']);
        expect(uploads('small')).to.deep.equal(['PUT ']);
        expect(Buffer.from((await store.get('mp/big')).body).equals(Buffer.from(big))).to.equal(true);
        expect((await store.get('mp/small')).body.length).to.equal(small.length);
      } finally {
        for (const p of procs.splice(0)) await p.kill();
        await proxy.close();
      }
    });

    it('serves only the prefix: keys outside it are neither shown nor touched; new files land under it', async () => {
      await store.put('pfx/a/inside.txt', te.encode('inside'));
      await store.put('pfx/a-sibling.txt', te.encode('sibling'));
      await store.put('pfx/outside.txt', te.encode('outside'));
      const sock = dir.file('p.sock');
      await startFs(['--socket', sock, '--bucket', `s3://${BUCKET}/pfx/a`]);
      const c = await connect(sock);
      const names = (await c.listdir(1)).map((e) => e.name).filter((n) => n !== '.' && n !== '..');
      expect(names).to.deep.equal(['inside.txt']);
      const { entry, fh } = await c.create(1, 'new.txt', O_CREAT | O_WRONLY, S_IFREG | 0o644);
      await c.write(entry.nodeid, fh, 0, te.encode('new'));
      await c.release(entry.nodeid, fh);
      expect(td.decode((await store.get('pfx/a/new.txt')).body)).to.equal('new');
      expect(td.decode((await store.get('pfx/a-sibling.txt')).body)).to.equal('sibling');
      expect(await store.head('pfx/new.txt')).to.equal(null);
    });

    it('serves a local store (file:): files written through the device are objects of the store', async () => {
      const root = dir.file('store');
      mkdirSync(root);
      const sock = dir.file('f.sock');
      const p = await startFs(['--socket', sock, '--bucket', `file:${root}`, '--log-level', 'warn']);
      const c = await connect(sock);
      const sub = await c.mkdir(1, 'sub', 0o750);
      const { entry, fh } = await c.create(sub.nodeid, 'f.bin', O_CREAT | O_WRONLY, S_IFREG | 0o600);
      const data = patternBytes(9, 70_000);
      await c.write(entry.nodeid, fh, 0, data);
      await c.release(entry.nodeid, fh);
      await c.close();
      expect((await p.stop()).code, explain(p)).to.equal(0);
      const { store: fileStore } = await createObjectStore(`file:${root}`);
      try {
        const obj = await fileStore.get('sub/f.bin');
        expect(Buffer.from(obj.body).equals(Buffer.from(data))).to.equal(true);
        expect(obj.metadata.mode).to.equal(String(S_IFREG | 0o600));
        expect((await fileStore.head('sub/'))?.metadata.mode).to.equal(String(S_IFDIR | 0o750));
      } finally {
        await fileStore.close();
      }
    });

    it('--readonly: reads work, every change is refused with EROFS, the bucket is unchanged', async () => {
      await store.put('ro/file.txt', te.encode('read me'), { metadata: { mode: String(S_IFREG | 0o644) } });
      await store.put('ro/dir/x', te.encode('x'));
      await store.put('ro/empty/', new Uint8Array(0), { metadata: { mode: String(S_IFDIR | 0o755) } });
      const before = (await store.list({ prefix: 'ro/' })).objects.map((o) => `${o.key} ${o.etag}`);
      const sock = dir.file('ro.sock');
      await startFs(['--socket', sock, '--bucket', `s3://${BUCKET}/ro`, '--readonly']);
      const c = await connect(sock);
      const f = await c.lookup(1, 'file.txt');
      const o = await c.open(f.nodeid, O_RDONLY);
      expect(td.decode(await c.read(f.nodeid, o.fh, 0, 100))).to.equal('read me');
      await c.release(f.nodeid, o.fh);
      const d = await c.lookup(1, 'dir');
      await c.lookup(1, 'empty');
      const refused: Record<string, string> = {
        create: await errnoCode(c.create(1, 'new.txt', O_CREAT | O_WRONLY, S_IFREG | 0o644)),
        openWrite: await errnoCode(c.open(f.nodeid, O_WRONLY)),
        openRdwr: await errnoCode(c.open(f.nodeid, O_RDWR)),
        mkdir: await errnoCode(c.mkdir(1, 'newdir')),
        mknod: await errnoCode(c.mknod(1, 'node', S_IFREG | 0o644)),
        symlink: await errnoCode(c.symlink(1, 'ln', 'file.txt')),
        unlink: await errnoCode(c.unlink(d.nodeid, 'x')),
        rmdir: await errnoCode(c.rmdir(1, 'empty')),
        rename: await errnoCode(c.rename(1, 'file.txt', 1, 'moved.txt')),
        chmod: await errnoCode(c.setattr(f.nodeid, { mode: 0o600 })),
        chown: await errnoCode(c.setattr(f.nodeid, { uid: 1, gid: 1 })),
        truncate: await errnoCode(c.setattr(f.nodeid, { size: 0 })),
        utimes: await errnoCode(c.setattr(f.nodeid, { mtimeNs: 0n })),
        setxattr: await errnoCode(c.setxattr(f.nodeid, 'user.x', te.encode('1'))),
        removexattr: await errnoCode(c.removexattr(f.nodeid, 'user.x')),
      };
      expect(refused).to.deep.equal(Object.fromEntries(Object.keys(refused).map((k) => [k, 'EROFS'])));
      const after = (await store.list({ prefix: 'ro/' })).objects.map((ob) => `${ob.key} ${ob.etag}`);
      expect(after).to.deep.equal(before);
    });
  });

  describe('vhost-s3 mount on the host', () => {
    before(function () {
      if (!isRoot || !existsSync('/dev/fuse')) this.skip();
    });

    it('mounts a bucket prefix, serves ordinary tools, and unmounts on SIGTERM (exit 0)', async () => {
      const mp = dir.file('mp');
      mkdirSync(mp);
      await store.put('mnt/seeded.txt', te.encode('seeded\n'));
      const p = new CliProcess(['mount', '--bucket', `s3://${BUCKET}/mnt`, mp], { env: { ...s3.env } });
      procs.push(p);
      await p.waitFor('the mount', () => readFileSync('/proc/mounts', 'utf8').includes(` ${mp} `));
      // Tools in a child process: this process must not block on the mount.
      const sh = async (cmd: string): Promise<string> => (await run('sh', ['-c', `cd "$1" && { ${cmd}; }`, 'sh', mp], { timeout: 20_000 })).stdout;
      expect(await sh('cat seeded.txt')).to.equal('seeded\n');
      await sh('mkdir d && echo hello > d/h.txt && mv d/h.txt d/g.txt && chmod 600 d/g.txt && ln -s d/g.txt l');
      expect(await sh('cat l && stat -c %a d/g.txt')).to.equal('hello\n600\n');
      const st = await p.stop('SIGTERM');
      expect(st.code, explain(p)).to.equal(0);
      expect(readFileSync('/proc/mounts', 'utf8')).not.to.include(` ${mp} `);
      expect(td.decode((await store.get('mnt/d/g.txt')).body)).to.equal('hello\n');
      expect((await store.head('mnt/d/g.txt'))?.metadata.mode).to.equal(String(S_IFREG | 0o600));
      expect(td.decode((await store.get('mnt/l')).body)).to.equal('d/g.txt');
    });

    it('exits 0 when someone else unmounts it', async () => {
      const mp = dir.file('mp2');
      mkdirSync(mp);
      const root = dir.file('store');
      mkdirSync(root);
      const p = new CliProcess(['mount', '--bucket', `file:${root}/`, '--log-level', 'warn', mp]);
      procs.push(p);
      await p.waitFor('the mount', () => readFileSync('/proc/mounts', 'utf8').includes(` ${mp} `));
      await run('umount', [mp]);
      const st = await Promise.race([p.exited, new Promise<null>((res) => setTimeout(() => res(null), 10_000))]);
      expect(st, `still running 10 s after umount\n${p.describe()}`).not.to.equal(null);
      expect(st!.code, explain(p)).to.equal(0);
    });
  });
});
