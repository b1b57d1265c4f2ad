// S3Store under faults: a small HTTP proxy in front of s3rver answers SlowDown/503, or
// cuts a GET body in the middle. Checks the SDK retry configuration (bounded, with
// backoff) and the store's resumption of broken bodies.
import { expect } from 'chai';
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import { S3Store } from '../../src/backends/s3-store.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { patternBytes } from '../support/tmp.js';
import { expectErrno } from './conformance.js';

interface Plan {
  /** Answer the next N requests with this status and S3 error code. */
  fail: number;
  failStatus: number;
  failCode: string;
  /** Cut the next N object GET bodies after this many bytes (connection destroyed). */
  cut: number;
  cutAfter: number;
}

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

describe('S3Store under faults (proxy in front of s3rver)', function () {
  this.timeout(60_000);
  let s3: S3rver;
  let proxy: Server;
  let endpoint: string;
  const plan: Plan = { fail: 0, failStatus: 503, failCode: 'SlowDown', cut: 0, cutAfter: 0 };
  let seen: Seen[] = [];

  before(async () => {
    s3 = await startS3rver({ buckets: ['faults'] });
    proxy = createServer((req, res) => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
      if (plan.fail > 0) {
        plan.fail--;
        req.resume();
        res.writeHead(plan.failStatus, { 'content-type': 'application/xml' });
        res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${plan.failCode}</Code><Message>injected</Message></Error>`);
        return;
      }
      const up = request({ host: '127.0.0.1', port: s3.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        const isObjectGet = req.method === 'GET' && !/[?&]list-type=/.test(req.url ?? '') && (ur.statusCode === 200 || ur.statusCode === 206);
        if (isObjectGet && plan.cut > 0) {
          plan.cut--;
          let sent = 0;
          ur.on('data', (chunk: Buffer) => {
            const room = plan.cutAfter - sent;
            if (chunk.length < room) {
              res.write(chunk);
              sent += chunk.length;
              return;
            }
            res.write(chunk.subarray(0, room), () => res.socket?.destroy());
            sent = plan.cutAfter;
            ur.destroy();
          });
          return;
        }
        ur.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    await new Promise<void>((res) => proxy.listen(0, '127.0.0.1', res));
    endpoint = `http://127.0.0.1:${(proxy.address() as { port: number }).port}`;
  });

  after(async () => {
    proxy?.closeAllConnections();
    await new Promise<void>((res) => (proxy ? proxy.close(() => res()) : res()));
    await s3?.stop();
  });

  beforeEach(() => {
    Object.assign(plan, { fail: 0, failStatus: 503, failCode: 'SlowDown', cut: 0, cutAfter: 0 });
    seen = [];
  });

  const open = (maxAttempts = 5): S3Store => new S3Store({ bucket: 'faults', endpoint, credentials: s3.credentials, maxAttempts });

  it('retries SlowDown and 503 with backoff, then succeeds', async () => {
    const store = open();
    try {
      plan.fail = 2;
      const t0 = Date.now();
      await store.put('retry/k', patternBytes(1, 1000));
      expect(seen.filter((s) => s.method === 'PUT').length).to.equal(3);
      expect(Date.now() - t0).to.be.below(15_000);
      plan.fail = 2;
      plan.failStatus = 500;
      plan.failCode = 'InternalError';
      expect((await store.get('retry/k')).body.length).to.equal(1000);
    } finally {
      await store.close();
    }
  });

  it('gives up after maxAttempts with EIO', async () => {
    const store = open(3);
    try {
      plan.fail = 100;
      plan.failStatus = 503;
      const e = await expectErrno(store.get('retry/k'), 'EIO');
      expect(e.storeCode).to.equal('SlowDown');
      expect(seen.length).to.equal(3);
    } finally {
      await store.close();
    }
  });

  it('does not retry client errors', async () => {
    const store = open();
    try {
      plan.fail = 1;
      plan.failStatus = 403;
      plan.failCode = 'AccessDenied';
      await expectErrno(store.get('retry/k'), 'EACCES');
      expect(seen.length).to.equal(1);
    } finally {
      await store.close();
    }
  });

  it('resumes a GET body cut in the middle, pinned to the same ETag', async () => {
    const store = open();
    try {
      const body = patternBytes(9, 3 * 1024 * 1024 + 17);
      const { etag } = await store.put('cut/obj', body);
      seen = [];
      plan.cut = 1;
      plan.cutAfter = 1024 * 1024 + 5;
      const g = await store.get('cut/obj');
      expect(Buffer.from(g.body).equals(Buffer.from(body))).to.equal(true);
      const gets = seen.filter((s) => s.method === 'GET');
      expect(gets.length).to.equal(2);
      expect(gets[1]!.headers.range).to.equal(`bytes=${1024 * 1024 + 5}-`);
      expect(gets[1]!.headers['if-match']).to.equal(etag);

      seen = [];
      plan.cut = 2;
      plan.cutAfter = 100_000;
      const target = new Uint8Array(1024 * 1024);
      const r = await store.getInto('cut/obj', 500_000, target);
      expect(r.bytesRead).to.equal(target.length);
      expect(Buffer.from(target).equals(Buffer.from(body.subarray(500_000, 500_000 + target.length)))).to.equal(true);
      const ranges = seen.filter((s) => s.method === 'GET').map((s) => s.headers.range);
      expect(ranges).to.deep.equal([`bytes=500000-${500_000 + target.length - 1}`, `bytes=600000-${500_000 + target.length - 1}`, `bytes=700000-${500_000 + target.length - 1}`]);
    } finally {
      await store.close();
    }
  });

  it('fails with EIO when the body keeps breaking', async () => {
    const store = open();
    try {
      await store.put('cut/obj2', patternBytes(3, 400_000));
      plan.cut = 100;
      plan.cutAfter = 10;
      await expectErrno(store.get('cut/obj2'), 'EIO');
    } finally {
      await store.close();
    }
  });
});
