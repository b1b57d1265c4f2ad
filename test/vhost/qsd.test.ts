// Our frontend session against qemu-storage-daemon's vhost-user-blk export (libvhost-user):
// negotiation, GET_CONFIG, memory, rings, real virtio-blk requests, GET_VRING_BASE.
import { expect } from 'chai';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, readFileSync, closeSync, writeSync, ftruncateSync, statSync } from 'node:fs';
import { FrontendSession } from '../../src/vhost/frontend-session.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES } from '../../src/vhost/protocol.js';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../src/virtio/features.js';
import { FrontendMemory, TempDir, TestRing, waitFor } from './helpers.js';

const QSD = 'qemu-storage-daemon';
const haveQsd = spawnSync(QSD, ['--version']).status === 0;

const IMAGE_SIZE = 8 * 1024 * 1024 + 3 * 4096;
const GUEST_BASE = 0x100000;
const MEM_SIZE = 1 << 20;
const REQ = 0x40000; // request header
const BUF = 0x50000; // data
const STATUS = 0x60000;

describe('vhost-user frontend session against qemu-storage-daemon', function () {
  this.timeout(30000);
  let dir: TempDir;
  let image: string;
  let socket: string;
  let qsd: ChildProcess | null = null;
  let output = '';

  before(function () {
    if (!haveQsd) this.skip();
  });

  beforeEach(async () => {
    dir = new TempDir();
    image = dir.file('disk.raw');
    socket = dir.file('qsd.sock');
    const fd = openSync(image, 'w');
    ftruncateSync(fd, IMAGE_SIZE);
    const block = Buffer.alloc(4096);
    for (let i = 0; i < 4096; i++) block[i] = (i * 7 + 3) & 0xff;
    writeSync(fd, block, 0, 4096, 4096); // sector 8
    closeSync(fd);
    output = '';
    qsd = spawn(
      QSD,
      [
        '--blockdev', `driver=file,node-name=f0,filename=${image}`,
        '--export', `type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=${socket},writable=on`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    qsd.stdout!.on('data', (b: Buffer) => (output += b.toString()));
    qsd.stderr!.on('data', (b: Buffer) => (output += b.toString()));
    await waitFor(() => existsSync(socket), 10000, `qemu-storage-daemon socket (${output})`);
  });

  afterEach(async () => {
    if (qsd !== null && qsd.exitCode === null) {
      const exited = new Promise((resolve) => qsd!.once('exit', resolve));
      qsd.kill('SIGTERM');
      await exited;
    }
    qsd = null;
    dir?.remove();
  });

  it('negotiates and reads the capacity from GET_CONFIG', async () => {
    const fe = await FrontendSession.connect(socket, { timeoutMs: 5000 });
    try {
      const neg = await fe.negotiate();
      expect(neg.features & VHOST_USER_F_PROTOCOL_FEATURES).to.equal(VHOST_USER_F_PROTOCOL_FEATURES);
      expect(neg.features & VIRTIO_F_VERSION_1).to.equal(VIRTIO_F_VERSION_1);
      for (const f of [ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG, ProtocolFeature.MQ, ProtocolFeature.CONFIGURE_MEM_SLOTS]) {
        expect(neg.protocolFeatures & f, `protocol feature 0x${f.toString(16)}`).to.equal(f);
      }
      expect(neg.queueNum).to.be.greaterThanOrEqual(1);
      expect(neg.maxMemSlots).to.be.greaterThanOrEqual(8);
      const cfg = await fe.getConfig(0, 60);
      expect(cfg.byteLength).to.equal(60);
      const capacity = new DataView(cfg.buffer, cfg.byteOffset).getBigUint64(0, true);
      expect(capacity).to.equal(BigInt(IMAGE_SIZE / 512));
    } finally {
      fe.close();
    }
  });

  it('serves virtio-blk reads and writes through rings we set up, and stops a ring', async () => {
    const fe = await FrontendSession.connect(socket, { timeoutMs: 5000 });
    const mem = new FrontendMemory(MEM_SIZE, GUEST_BASE);
    const ring = new TestRing(mem, 0, 0, 16, { eventIdx: true, indirect: true });
    try {
      const neg = await fe.negotiate();
      await fe.setFeatures(neg.features & (VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC));
      await fe.addMemRegion(mem.region);
      await ring.setup(fe);
      await fe.enableVring(0, true);

      const dv = new DataView(mem.bytes.buffer, mem.bytes.byteOffset);
      const blk = async (type: number, sector: number, len: number, token: number): Promise<number> => {
        dv.setUint32(REQ, type, true);
        dv.setUint32(REQ + 4, 0, true);
        dv.setBigUint64(REQ + 8, BigInt(sector), true);
        mem.bytes[STATUS] = 0xff;
        const data = len > 0 ? [mem.buffer(BUF, len)] : [];
        const readable = type === 1 ? [mem.buffer(REQ, 16), ...data] : [mem.buffer(REQ, 16)];
        const writable = type === 1 ? [mem.buffer(STATUS, 1)] : [...data, mem.buffer(STATUS, 1)];
        expect(ring.dq.add(readable, writable, token)).to.be.greaterThanOrEqual(0);
        ring.dq.kick();
        const done = await ring.waitCompletions(1);
        expect(done[0]!.token).to.equal(token);
        return mem.bytes[STATUS]!;
      };

      // IN (read) sector 8: the pattern written to the file.
      expect(await blk(0, 8, 4096, 1)).to.equal(0);
      const expected = readFileSync(image).subarray(4096, 8192);
      expect(Buffer.from(mem.bytes.subarray(BUF, BUF + 4096)).equals(expected)).to.equal(true);

      // OUT (write) sector 100, then FLUSH, then the file has it.
      for (let i = 0; i < 4096; i++) mem.bytes[BUF + i] = (i * 13) & 0xff;
      expect(await blk(1, 100, 4096, 2)).to.equal(0);
      expect(await blk(4, 0, 0, 3)).to.equal(0);
      const onDisk = readFileSync(image).subarray(100 * 512, 100 * 512 + 4096);
      expect(Buffer.from(mem.bytes.subarray(BUF, BUF + 4096)).equals(onDisk)).to.equal(true);

      await fe.enableVring(0, false);
      expect(await fe.getVringBase(0)).to.equal(3);
      expect(statSync(image).size).to.equal(IMAGE_SIZE);
    } finally {
      fe.close();
      ring.close();
      mem.close();
    }
  });
});
