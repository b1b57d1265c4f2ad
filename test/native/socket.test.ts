import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native/index.js';
import { fdCount, nativeError } from './helpers.js';

describe('native: unix sockets', () => {
  it('passes two fds over a socket pair and they work', () => {
    const [a, b] = native.socketPair();
    const efd = native.eventfd(0);
    const memfd = native.memfdCreate('pass', 4096);
    try {
      const out = Buffer.from('header12');
      expect(native.sendMsg(a, out, 0, out.length, [efd, memfd])).to.equal(8);
      const buf = Buffer.alloc(64);
      const got = native.recvMsg(b, buf, 4, 32, 8);
      expect(got).to.not.equal(null);
      expect(got!.bytes).to.equal(8);
      expect(buf.subarray(4, 12).toString()).to.equal('header12');
      expect(got!.fds).to.have.length(2);
      const [efd2, memfd2] = got!.fds;
      native.eventfdWrite(efd2!, 7);
      expect(native.eventfdRead(efd)).to.equal(7);
      const m1 = native.mmap(memfd, 0, 4096, true);
      const m2 = native.mmap(memfd2!, 0, 4096, true);
      new Uint8Array(m2.windows[0]!)[10] = 0x5a;
      expect(new Uint8Array(m1.windows[0]!)[10]).to.equal(0x5a);
      m1.unmap();
      m2.unmap();
      native.close(efd2!);
      native.close(memfd2!);
    } finally {
      for (const fd of [a, b, efd, memfd]) native.close(fd);
    }
  });

  it('closes every received fd and throws EMSGSIZE when control data is truncated', () => {
    const [a, b] = native.socketPair();
    const fds = [native.eventfd(0), native.eventfd(0), native.eventfd(0)];
    try {
      const before = fdCount();
      const msg = Buffer.from('x');
      native.sendMsg(a, msg, 0, 1, fds);
      const err = nativeError(() => native.recvMsg(b, Buffer.alloc(8), 0, 8, 1));
      expect(err.code).to.equal('EMSGSIZE');
      expect(err.errno).to.equal(90);
      expect(fdCount()).to.equal(before);
      // maxFds 0: nothing may arrive either
      native.sendMsg(a, msg, 0, 1, fds);
      expect(nativeError(() => native.recvMsg(b, Buffer.alloc(8), 0, 8, 0)).code).to.equal('EMSGSIZE');
      expect(fdCount()).to.equal(before);
    } finally {
      for (const fd of [a, b, ...fds]) native.close(fd);
    }
  });

  it('returns null on EAGAIN and bytes 0 when the peer closed', () => {
    const [a, b] = native.socketPair();
    const buf = Buffer.alloc(8);
    expect(native.recvMsg(b, buf, 0, 8, 4)).to.equal(null);
    native.close(a);
    expect(native.recvMsg(b, buf, 0, 8, 4)).to.deep.equal({ bytes: 0, fds: [] });
    native.close(b);
  });

  it('sendMsg returns -1 when the socket buffer is full, EPIPE after the peer closed', () => {
    const [a, b] = native.socketPair();
    const big = Buffer.alloc(1 << 20);
    let sent = 0;
    for (;;) {
      const n = native.sendMsg(a, big, 0, big.length, []);
      if (n === -1) break;
      sent += n;
    }
    expect(sent).to.be.greaterThan(0);
    native.close(b);
    expect(nativeError(() => native.sendMsg(a, big, 0, 1, [])).code).to.match(/EPIPE|ECONNRESET/);
    native.close(a);
  });

  it('rejects byte ranges outside the buffer', () => {
    const [a, b] = native.socketPair();
    try {
      expect(() => native.recvMsg(b, Buffer.alloc(8), 4, 8, 0)).to.throw(RangeError);
      expect(() => native.sendMsg(a, Buffer.alloc(8), 9, 0, [])).to.throw(RangeError);
    } finally {
      native.close(a);
      native.close(b);
    }
  });

  it('listens, connects and accepts on a path', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vhs-native-'));
    const path = join(dir, 'sock');
    const listenFd = native.unixListen(path, 4);
    try {
      expect(native.unixAccept(listenFd)).to.equal(-1);
      const client = native.unixConnect(path);
      const server = native.unixAccept(listenFd);
      expect(server).to.be.greaterThan(2);
      const msg = Buffer.from('ping');
      native.sendMsg(client, msg, 0, 4, []);
      const buf = Buffer.alloc(4);
      expect(native.recvMsg(server, buf, 0, 4, 0)!.bytes).to.equal(4);
      expect(buf.toString()).to.equal('ping');
      // the connected fd is non-blocking
      expect(native.recvMsg(client, buf, 0, 4, 0)).to.equal(null);
      native.close(client);
      native.close(server);
      expect(nativeError(() => native.unixListen(path, 4)).code).to.equal('EADDRINUSE');
      expect(nativeError(() => native.unixConnect(join(dir, 'missing'))).code).to.equal('ENOENT');
    } finally {
      native.close(listenFd);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('dup gives a working second fd; errors carry errno and code', () => {
    const efd = native.eventfd(0);
    const copy = native.dup(efd);
    expect(copy).to.not.equal(efd);
    native.eventfdWrite(copy, 2);
    expect(native.eventfdRead(efd)).to.equal(2);
    native.close(copy);
    native.close(efd);
    const err = nativeError(() => native.close(efd));
    expect(err.errno).to.equal(9);
    expect(err.code).to.equal('EBADF');
  });
});
