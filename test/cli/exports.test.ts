// `vhost-s3 run --config exports.json`: one gateway serving several blk and fs exports.
// - the file is validated field by field, each mistake one line naming the export (exit 2);
// - every listed export serves at once, and SIGTERM stops them all (exit 0, sockets gone);
// - a sick export (its store behind the fault proxy, every request held for a minute) does
//   not stall the healthy ones in the same process: they complete hundreds of requests
//   while the sick one's request stays unanswered.
import { expect } from 'chai';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';

import { parseExports } from '../../src/cli/exports.js';
import { ConfigError } from '../../src/util/errors.js';
import { BlkClient } from '../../src/frontend/blk-client.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { O_CREAT, O_RDONLY, O_WRONLY, S_IFREG } from '../../src/fuse/abi.js';
import { BlkStatus } from '../../src/blk/protocol.js';
import { createObjectStore } from '../../src/backends/locator.js';
import { S3Store } from '../../src/backends/s3-store.js';
import { createImage } from '../../src/blk/image-admin.js';
import { ImageKeys } from '../../src/blk/image-format.js';
import { CliProcess, runCli, startRunServer as startRun } from '../support/cli.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { TmpDir, makeRawFile, patternBytes } from '../support/tmp.js';

const MiB = 1 << 20;

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

function configError(doc: unknown): string {
  try {
    parseExports(doc, 'x.json');
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    const msg = (err as Error).message;
    expect(msg.split('\n'), msg).to.have.length(1);
    return msg;
  }
  throw new Error(`accepted: ${JSON.stringify(doc)}`);
}

describe('cli: exports file validation', () => {
  const blk = { type: 'blk', socket: '/run/a.sock', image: 'file:/tmp/a.raw' };
  const fs = { type: 'fs', socket: '/run/b.sock', bucket: 'file:/tmp/store' };

  it('accepts blk and fs exports with their commands\' fields; defaults apply where the type has the field', () => {
    const specs = parseExports({
      defaults: { 'cache-size': '64M', endpoint: 'http://127.0.0.1:9000', tag: 'data' },
      exports: [{ ...blk, queues: 2, readonly: true, serial: 'S1' }, { ...fs, 'attr-timeout': 5, 'cache-size': 1048576 }],
    }, 'x.json');
    expect(specs).to.have.length(2);
    const [b, f] = specs;
    expect(b!.type).to.equal('blk');
    expect(f!.type).to.equal('fs');
    if (b!.type !== 'blk' || f!.type !== 'fs') return;
    expect(b!.config).to.include({ socket: '/run/a.sock', queues: 2, readonly: true, serial: 'S1', cacheSize: 64 * MiB, endpoint: 'http://127.0.0.1:9000', ioEngine: 'uring' });
    expect(f!.config).to.include({ bucket: 'file:/tmp/store', attrTimeout: 5, cacheSize: MiB, tag: 'data', entryTimeout: 1 });
  });

  it('the environment does not configure exports (the file does)', () => {
    const saved = process.env.VHOST_S3_QUEUES;
    process.env.VHOST_S3_QUEUES = '7';
    try {
      const [b] = parseExports({ exports: [blk] }, 'x.json');
      expect(b!.config.queues).to.equal(1);
    } finally {
      if (saved === undefined) delete process.env.VHOST_S3_QUEUES;
      else process.env.VHOST_S3_QUEUES = saved;
    }
  });

  const cases: [string, unknown, RegExp][] = [
    ['not an object', [], /^x\.json: expected a JSON object/],
    ['unknown top-level field', { exports: [blk], export: [] }, /unknown field "export"/],
    ['no exports', { exports: [] }, /"exports" must be a non-empty array/],
    ['bad type', { exports: [{ ...blk, type: 'nbd' }] }, /exports\[0\]: "type" must be "blk" or "fs"/],
    ['unknown field', { exports: [blk, { ...fs, 'cache-sise': '1M' }] }, /exports\[1\] \(fs\): unknown field "cache-sise"/],
    ['blk field on fs', { exports: [{ ...fs, image: 'x' }] }, /exports\[0\] \(fs\): unknown field "image"/],
    ['process option per export', { exports: [{ ...blk, 'log-level': 'debug' }] }, /unknown field "log-level"/],
    ['bad size', { exports: [{ ...blk, 'cache-size': 'lots' }] }, /exports\[0\] \(blk\): invalid size "lots"/],
    ['bad number', { exports: [{ ...fs, 'attr-timeout': -1 }] }, /exports\[0\] \(fs\): "attr-timeout": must be a number, 0 or more/],
    ['bad queues', { exports: [{ ...blk, queues: 0 }] }, /exports\[0\] \(blk\): "queues": must be an integer from 1 to 1024/],
    ['bad boolean', { exports: [{ ...blk, readonly: 'yes' }] }, /exports\[0\] \(blk\): "readonly" takes true or false/],
    ['bad enum', { exports: [{ ...blk, 'io-engine': 'aio' }] }, /exports\[0\] \(blk\): "io-engine": must be one of/],
    ['object value', { exports: [{ ...blk, queues: { n: 2 } }] }, /"queues" must be a string, a number or true\/false/],
    ['no socket', { exports: [{ type: 'blk', image: 'file:/x' }] }, /exports\[0\] \(blk\): no socket given/],
    ['no image', { exports: [{ type: 'blk', socket: '/run/x.sock' }] }, /exports\[0\] \(blk\): no image given/],
    ['no bucket', { exports: [{ type: 'fs', socket: '/run/x.sock' }] }, /exports\[0\] \(fs\): no bucket given/],
    ['long serial', { exports: [{ ...blk, serial: 'x'.repeat(21) }] }, /"serial" is 21 bytes long/],
    ['same socket twice', { exports: [blk, { ...fs, socket: blk.socket }] }, /exports\[1\]: socket \/run\/a\.sock is also used by exports\[0\]/],
    ['defaults with a socket', { defaults: { socket: '/x' }, exports: [blk] }, /defaults: "socket" is not a field that exports share/],
    ['defaults with an unknown field', { defaults: { colour: 'red' }, exports: [blk] }, /defaults: "colour"/],
  ];
  for (const [what, doc, re] of cases) {
    it(`refuses ${what} in one line`, () => {
      expect(configError(doc)).to.match(re);
    });
  }

  it('vhost-s3 run: a missing file, bad JSON or a bad field exits 2 with one line', async function () {
    this.timeout(30_000);
    const dir = new TmpDir('vhost-s3-exports-');
    try {
      const bad = dir.file('bad.json');
      writeFileSync(bad, '{"exports": [');
      const field = dir.file('field.json');
      writeFileSync(field, JSON.stringify({ exports: [{ ...blk, queues: 'two' }] }));
      for (const [args, re] of [
        [['run'], /no configuration file given/],
        [['run', '--config', dir.file('none.json')], /cannot read .*none\.json: ENOENT/],
        [['run', '--config', bad], /bad\.json: not valid JSON/],
        [['run', '--config', field], /field\.json: exports\[0\] \(blk\): "queues": must be an integer/],
      ] as const) {
        const r = await runCli(args);
        expect(r.code, r.stderr).to.equal(2);
        expect(r.stderr.trim().split('\n'), r.stderr).to.have.length(1);
        expect(r.stderr).to.match(re);
      }
      // --help documents the command and its file.
      const h = await runCli(['run', '--help']);
      expect(h.code).to.equal(0);
      expect(h.stdout).to.match(/--config/).and.match(/--shutdown-timeout/).and.match(/VHOST_S3_CONFIG/);
      expect(h.stdout).to.include('"type": "blk"').and.include('"type": "fs"').and.include('SIGHUP');
    } finally {
      dir.remove();
    }
  });
});

describe('cli: vhost-s3 run serves several exports', function () {
  this.timeout(90_000);
  let dir: TmpDir;
  let server: CliProcess | null = null;
  const clients: { close(): Promise<void> }[] = [];

  beforeEach(() => {
    dir = new TmpDir('vhost-s3-run-');
  });
  afterEach(async function () {
    for (const c of clients.splice(0)) await c.close().catch(() => undefined);
    if (this.currentTest?.state === 'failed' && server) console.log(server.describe());
    await server?.kill();
    server = null;
    dir.remove();
  });

  it('two disks and two shares from one process; SIGTERM stops them all and removes every socket', async () => {
    const raw = makeRawFile(dir.file('a.raw'), 16 * MiB);
    const image = `file:${dir.file('store')}/images/b`;
    expect((await runCli(['image', 'create', image, '--size', '32M', '--chunk-size', '1M'])).code).to.equal(0);
    mkdirSync(dir.file('store/one'), { recursive: true });
    mkdirSync(dir.file('store/two'), { recursive: true });
    const socks = { a: dir.file('a.sock'), b: dir.file('b.sock'), s1: dir.file('s1.sock'), s2: dir.file('s2.sock') };
    const file = dir.file('exports.json');
    writeFileSync(file, JSON.stringify({
      defaults: { 'cache-size': '16M' },
      exports: [
        { type: 'blk', socket: socks.a, image: `file:${raw}`, serial: 'DISK-A', queues: 2 },
        { type: 'blk', socket: socks.b, image, serial: 'DISK-B' },
        { type: 'fs', socket: socks.s1, bucket: `file:${dir.file('store')}/one`, tag: 'one' },
        { type: 'fs', socket: socks.s2, bucket: `file:${dir.file('store')}/two`, tag: 'two', readonly: true },
      ],
    }));
    server = await startRun(file);
    const out = server.stdout;
    expect(out).to.include('serving 4 exports');
    expect(out).to.include(`-chardev socket,id=d0,path=${socks.a} -device vhost-user-blk-pci,chardev=d0,num-queues=2`);
    expect(out).to.include(`-chardev socket,id=d1,path=${socks.b} -device vhost-user-blk-pci,chardev=d1`);
    expect(out).to.include(`-device vhost-user-fs-pci,chardev=f0,tag=one`);
    expect(out).to.include(`-device vhost-user-fs-pci,chardev=f1,tag=two`);

    const a = await BlkClient.connect(socks.a, { queues: 2 });
    clients.push(a);
    const b = await BlkClient.connect(socks.b);
    clients.push(b);
    expect(a.capacity).to.equal(16 * MiB);
    expect(b.capacity).to.equal(32 * MiB);
    expect((await a.getIdAsync()).id).to.equal('DISK-A');
    expect((await b.getIdAsync()).id).to.equal('DISK-B');
    const data = patternBytes(3, 64 * 1024);
    for (const c of [a, b]) {
      const buf = c.allocBuffer(data.length);
      buf.bytes.set(data);
      expect(await c.writeAsync(0, MiB, buf)).to.equal(BlkStatus.Ok);
      expect(await c.flushAsync()).to.equal(BlkStatus.Ok);
    }
    const one = await FuseClient.connect(socks.s1);
    clients.push(one);
    await one.init();
    const made = await one.create(1, 'hello.txt', O_CREAT | O_WRONLY, S_IFREG | 0o644);
    await one.write(made.entry.nodeid, made.fh, 0, new TextEncoder().encode('one'));
    await one.release(made.entry.nodeid, made.fh);
    const two = await FuseClient.connect(socks.s2);
    clients.push(two);
    await two.init();
    await two.create(1, 'nope', O_CREAT | O_WRONLY, S_IFREG | 0o644).then(
      () => expect.fail('a read-only share created a file'),
      (err: { code?: string }) => expect(err.code).to.equal('EROFS'),
    );
    for (const c of clients.splice(0)) await c.close();

    const st = await server.stop('SIGTERM');
    expect(st.code, server.describe()).to.equal(0);
    for (const s of Object.values(socks)) expect(existsSync(s), s).to.equal(false);
    server.logLines(); // JSON lines only
    expect(readFileSync(raw).subarray(MiB, MiB + data.length).equals(Buffer.from(data)), 'disk A written').to.equal(true);
    // `image create` made store/images a store; the shares' directories are stores of their own.
    const images = (await createObjectStore(`file:${dir.file('store/images')}`)).store;
    const shareOne = (await createObjectStore(`file:${dir.file('store/one')}`)).store;
    try {
      expect(new TextDecoder().decode((await shareOne.get('hello.txt')).body)).to.equal('one');
      expect(await images.head('b/chunks/0000000000000001')).not.to.equal(null);
    } finally {
      await images.close();
      await shareOne.close();
    }
  });

  it('an export that cannot be opened stops the start: the others are closed again, exit 2, no socket left', async () => {
    const raw = makeRawFile(dir.file('a.raw'), 16 * MiB);
    const file = dir.file('exports.json');
    writeFileSync(file, JSON.stringify({
      exports: [
        { type: 'blk', socket: dir.file('a.sock'), image: `file:${raw}` },
        { type: 'blk', socket: dir.file('b.sock'), image: `file:${dir.file('missing.raw')}` },
      ],
    }));
    const r = await runCli(['run', '--config', file]);
    expect(r.code, r.stderr).to.equal(2);
    expect(r.stderr).to.match(/^vhost-s3: blk .*b\.sock: /);
    expect(r.stderr.trim().split('\n')).to.have.length(1);
    expect(existsSync(dir.file('a.sock'))).to.equal(false);
  });
});

describe('cli: a sick export does not stall the others', function () {
  this.timeout(90_000);
  let s3: S3rver;
  let proxy: FaultProxy;
  let dir: TmpDir;
  let server: CliProcess | null = null;
  const clients: { close(): Promise<void> }[] = [];

  before(async () => {
    s3 = await startS3rver({ buckets: ['sick'] });
    proxy = await FaultProxy.start(s3.port, { seed: 7 });
    dir = new TmpDir('vhost-s3-sick-');
  });
  after(async () => {
    // The gateway first: a client's close waits for its requests in flight, which the proxy holds.
    await server?.kill();
    for (const c of clients.splice(0)) await c.close().catch(() => undefined);
    await proxy?.close();
    await s3?.stop();
    dir?.remove();
  });

  it('while every request of an s3:// share and an s3:// disk hangs, a disk and a share on local stores keep completing requests', async () => {
    const raw = makeRawFile(dir.file('disk.raw'), 16 * MiB);
    mkdirSync(dir.file('store/share'), { recursive: true });
    const direct = new S3Store({ bucket: 'sick', endpoint: s3.endpoint, credentials: s3.credentials });
    try {
      await createImage(direct, new ImageKeys('images/x/'), 8 * MiB, MiB);
    } finally {
      await direct.close();
    }
    const socks = { sick: dir.file('sick.sock'), sickDisk: dir.file('sick-disk.sock'), disk: dir.file('disk.sock'), share: dir.file('share.sock') };
    const file = dir.file('exports.json');
    writeFileSync(file, JSON.stringify({
      exports: [
        { type: 'fs', socket: socks.sick, bucket: 's3://sick/data', endpoint: proxy.endpoint, 'attr-timeout': 0, 'negative-timeout': 0, 'list-timeout': 0 },
        { type: 'blk', socket: socks.sickDisk, image: 's3://sick/images/x', endpoint: proxy.endpoint },
        { type: 'blk', socket: socks.disk, image: `file:${raw}`, queues: 2 },
        { type: 'fs', socket: socks.share, bucket: `file:${dir.file('store')}/share` },
      ],
    }));
    server = await startRun(file, { env: s3.env });

    const sick = await FuseClient.connect(socks.sick);
    clients.push(sick);
    await sick.init();
    const sickDisk = await BlkClient.connect(socks.sickDisk, { memorySize: 4 * MiB });
    clients.push(sickDisk);
    // From now on every request to the sick store waits a minute (longer than this test).
    proxy.inject('latency', { rate: 1, latencyMs: 60_000 });
    const before = proxy.counts.latency;
    let sickDone = false;
    const stuck = sick.lookup(1, 'anything').then(() => (sickDone = true), () => (sickDone = true));
    void stuck;
    let sickDiskDone = false;
    void sickDisk.readAsync(0, 3 * MiB, sickDisk.allocBuffer(64 * 1024)).then(() => (sickDiskDone = true));
    // Both sick exports have a request held by the store.
    while (proxy.counts.latency - before < 2) await new Promise((r) => setTimeout(r, 20));

    // The healthy exports: 400 verified disk writes and reads, 40 files written and read back.
    const disk = await BlkClient.connect(socks.disk, { queues: 2 });
    clients.push(disk);
    let diskOps = 0;
    await Promise.all([0, 1].map(async (q) => {
      const buf = disk.allocBuffer(4096);
      for (let i = 0; i < 100; i++) {
        const block = q * 1000 + i;
        buf.bytes.set(patternBytes(block, 4096));
        expect(await disk.writeAsync(q, block * 4096, buf)).to.equal(BlkStatus.Ok);
        buf.bytes.fill(0);
        expect(await disk.readAsync(q, block * 4096, buf)).to.equal(BlkStatus.Ok);
        expect(Buffer.from(buf.bytes).equals(Buffer.from(patternBytes(block, 4096)))).to.equal(true);
        diskOps += 2;
      }
    }));
    const share = await FuseClient.connect(socks.share);
    clients.push(share);
    await share.init();
    let fileOps = 0;
    for (let i = 0; i < 40; i++) {
      const body = new TextEncoder().encode(`file ${i}\n`);
      const made = await share.create(1, `f${i}`, O_CREAT | O_WRONLY, S_IFREG | 0o644);
      await share.write(made.entry.nodeid, made.fh, 0, body);
      await share.release(made.entry.nodeid, made.fh);
      const o = await share.open(made.entry.nodeid, O_RDONLY);
      expect(Buffer.from(await share.read(made.entry.nodeid, o.fh, 0, 4096)).equals(Buffer.from(body))).to.equal(true);
      await share.release(made.entry.nodeid, o.fh);
      fileOps += 6;
    }
    expect(diskOps).to.equal(400);
    expect(fileOps).to.equal(240);
    expect(sickDone, 'the sick share answered although its store holds every request').to.equal(false);
    expect(sickDiskDone, 'the sick disk answered although its store holds every request').to.equal(false);
    expect(server.running).to.equal(true);
  });
});
