// HeadObject and PutObject sent directly (src/backends/s3-direct.ts) against the SDK's HeadObject: the same
// heads, nulls, errnos, attempts and metrics through a fault proxy in front of s3rver; the
// same request line and signature as the SDK's (a plain server records both); connections
// kept across HEADs.
import { expect } from 'chai';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { HttpRequest } from '@smithy/core/protocols';
import { Hash } from '@smithy/core/serde';
import { SignatureV4 } from '@smithy/signature-v4';
import type { AwsCredentialIdentity } from '@smithy/types';
import { S3Store } from '../../src/backends/s3-store.js';
import { DirectS3, encodeKey } from '../../src/backends/s3-direct.js';
import { GatewayRetryStrategy } from '../../src/backends/s3-retry.js';
import { undiciAgent } from '../../src/backends/s3-ranged-get.js';
import type { S3Observer } from '../../src/metrics/observer.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { StoreError, type PutOptions } from '../../src/backends/object-store.js';

const WEIRD_KEYS = ['plain', 'dir/sub/file.txt', 'sp ace+plus&amp=eq?q#h', 'é/ü ñ/日本', "b!a'n(g)*~.-_", 'pct%20x', 'a//b', 'trailing/'];
/** Those s3rver stores faithfully (its keys are file paths). */
const STORED_KEYS = WEIRD_KEYS.filter((k) => !k.includes('//') && !k.endsWith('/'));

describe('HeadObject and PutObject sent directly (DirectS3) against the SDK', function () {
  this.timeout(60_000);
  let s3: S3rver;
  let proxy: FaultProxy;
  const events: string[] = [];
  const observer: S3Observer = {
    attempt: (op, status, sent, received) => events.push(`attempt ${op} ${status} ${sent} ${received}`),
    finished: (op, attempts) => events.push(`finished ${op} ${attempts}`),
  };
  const stores: S3Store[] = [];
  const open = (smallRequestTransport: 'direct' | 'sdk', maxAttempts = 3): S3Store => {
    const s = new S3Store({
      bucket: 'heads', endpoint: proxy.endpoint, credentials: s3.credentials, maxAttempts, readWorkers: 0, observer, smallRequestTransport, directPutMaxBytes: 1 << 20, conditionalWrites: true,
      retry: { baseDelayMs: 1, throttlingBaseDelayMs: 1 },
    });
    stores.push(s);
    return s;
  };

  before(async () => {
    s3 = await startS3rver({ buckets: ['heads'] });
    proxy = await FaultProxy.start(s3.port);
    proxy.record = true;
    const w = new S3Store({ bucket: 'heads', endpoint: s3.endpoint, credentials: s3.credentials, readWorkers: 0 });
    stores.push(w);
    for (const k of STORED_KEYS) await w.put(k, new Uint8Array(k.length), { metadata: { mode: '33188', uid: '1000', mtime: '1700000000.25' }, contentType: 'text/plain' });
    // Metadata with bytes outside ASCII (a bucket written by another tool): node:http sends them as latin1.
    await w.client.send(new PutObjectCommand({ Bucket: 'heads', Key: 'latin1', Body: new Uint8Array(1), Metadata: { name: 'café ü', Mixed: 'X Y' } }));
  });
  after(async () => {
    for (const s of stores) await s.close();
    await proxy?.close();
    await s3?.stop();
  });
  beforeEach(() => {
    proxy.reset();
    events.length = 0;
  });

  const compare = async (fn: (s: S3Store) => Promise<unknown>, setup: () => void = () => {}, maxAttempts = 3): Promise<{ result: unknown; events: string[]; seen: number }> => {
    const out: { result: unknown; events: string[]; seen: number }[] = [];
    for (const t of ['sdk', 'direct'] as const) {
      const s = open(t, maxAttempts);
      await s.checkBucket(); // the bucket check after a first 404, out of the way
      proxy.reset();
      events.length = 0;
      setup();
      let result: unknown;
      try {
        result = await fn(s);
      } catch (e) {
        const err = e as StoreError;
        expect(err).to.be.instanceOf(StoreError);
        result = { error: err.code, storeCode: err.storeCode, httpStatus: err.httpStatus, message: err.message.replace(/ \(.*?\): /, ': ') };
      }
      out.push({ result, events: [...events], seen: proxy.seen.length });
      proxy.reset();
    }
    expect(out[1], 'direct against sdk').to.deep.equal(out[0]);
    return out[1]!;
  };

  it('the same heads for keys that need encoding, with metadata (also latin1 bytes) and content type', async () => {
    for (const k of [...STORED_KEYS, 'latin1']) {
      const r = await compare((s) => s.head(k));
      expect(r.result, k).to.not.equal(null);
      expect(r.events).to.deep.equal(['attempt HeadObject 200 0 0', 'finished HeadObject 1']);
    }
    const latin = (await compare((s) => s.head('latin1'))).result as { metadata: Record<string, string> };
    expect(latin.metadata).to.deep.equal({ name: 'café ü', mixed: 'X Y' });
  });

  it('a missing key is null (one attempt, not retried); a missing bucket ENOENT', async () => {
    const r = await compare((s) => s.head('no/such key'));
    expect(r.result).to.equal(null);
    expect(r.events).to.deep.equal(['attempt HeadObject 404 0 0', 'finished HeadObject 1']);
    const s = new S3Store({ bucket: 'no-such-bucket', endpoint: s3.endpoint, credentials: s3.credentials, readWorkers: 0 });
    stores.push(s);
    const e = await s.head('k').then(() => null, (err: unknown) => err as StoreError);
    expect(e?.code).to.equal('ENOENT');
    expect(e?.missingContainer).to.equal(true);
  });

  it('403 is EACCES at once; 500/503/429 are retried up to maxAttempts and end in EIO; one 503 then success', async () => {
    const forbidden = await compare((s) => s.head('plain'), () => proxy.failNext(1, 403, 'AccessDenied'));
    expect(forbidden.result).to.include({ error: 'EACCES', httpStatus: 403 });
    expect(forbidden.seen).to.equal(1);
    for (const [status, code] of [[500, 'InternalError'], [503, 'SlowDown'], [429, 'SlowDown']] as const) {
      const r = await compare((s) => s.head('plain'), () => proxy.failNext(10, status, code));
      expect(r.result).to.include({ error: 'EIO', httpStatus: status });
      expect(r.seen).to.equal(3);
      expect(r.events.at(-1)).to.equal('finished HeadObject 3');
    }
    const once = await compare((s) => s.head('plain'), () => proxy.failNext(1, 503, 'SlowDown'));
    expect(once.result).to.include({ key: 'plain' });
    expect(once.events).to.deep.equal(['attempt HeadObject 503 0 0', 'attempt HeadObject 200 0 0', 'finished HeadObject 2']);
  });

  it('a reset connection is retried; resets every time end in EIO "connection reset"', async () => {
    let n = 0;
    const once = await compare((s) => s.head('plain'), () => {
      n = 0;
      proxy.inject('reset', { rate: 1, filter: (r) => r.method === 'HEAD' && n++ === 0 });
    });
    expect(once.result).to.include({ key: 'plain' });
    expect(once.events).to.deep.equal(['attempt HeadObject 0 0 0', 'attempt HeadObject 200 0 0', 'finished HeadObject 2']);
    const always = await compare((s) => s.head('plain'), () => proxy.inject('reset', { rate: 1, filter: (r) => r.method === 'HEAD' }));
    expect(always.result).to.include({ error: 'EIO' });
    expect((always.result as { message: string }).message).to.include('connection reset');
    expect(always.seen).to.equal(3);
  });

  it('PUT: the same ETag, stored bytes, metadata and content type, and the same metrics (bytes sent)', async () => {
    const body = new Uint8Array(3000).map((_, i) => i * 7);
    const r = await compare(async (s) => {
      const put = await s.put('put/é k+1', body, { metadata: { mode: '33188', mtime: '1700000000.5', note: '  two  spaces ' }, contentType: 'text/x; a=1' });
      const got = await s.get('put/é k+1');
      return { put, head: { ...got, body: undefined, lastModified: undefined }, same: Buffer.from(got.body).equals(body) };
    });
    expect(r.result).to.deep.include({ same: true });
    expect(r.events.slice(0, 2)).to.deep.equal(['attempt PutObject 200 3000 0', 'finished PutObject 1']);
    const empty = await compare((s) => s.put('put/empty', new Uint8Array(0)));
    expect(empty.events).to.deep.equal(['attempt PutObject 200 0 0', 'finished PutObject 1']);
  });

  it('PUT: 403 EACCES at once; SlowDown and 500 retried then EIO with the error code; a failed If-None-Match EEXIST; If-Match ESTALE', async () => {
    const body = new Uint8Array(100);
    const forbidden = await compare((s) => s.put('put/e', body), () => proxy.failNext(1, 403, 'AccessDenied'));
    expect(forbidden.result).to.include({ error: 'EACCES', storeCode: 'AccessDenied', httpStatus: 403 });
    expect(forbidden.seen).to.equal(1);
    for (const [status, code] of [[503, 'SlowDown'], [500, 'InternalError']] as const) {
      const r = await compare((s) => s.put('put/e', body), () => proxy.failNext(10, status, code));
      expect(r.result).to.include({ error: 'EIO', storeCode: code, httpStatus: status });
      expect(r.seen).to.equal(3);
      expect(r.events).to.deep.equal([`attempt PutObject ${status} 100 ${r.events[0]!.split(' ')[4]}`, r.events[1], r.events[2], 'finished PutObject 3']);
    }
    const exists = await compare((s) => s.put('put/e', body, { ifNoneMatch: '*' }), () => proxy.failNext(1, 412, 'PreconditionFailed'));
    expect(exists.result).to.include({ error: 'EEXIST', storeCode: 'PreconditionFailed' });
    const stale = await compare((s) => s.put('put/e', body, { ifMatch: '"x"' }), () => proxy.failNext(1, 412, 'PreconditionFailed'));
    expect(stale.result).to.include({ error: 'ESTALE' });
  });

  it('PUT: a connection reset mid-request is retried and the object stored', async () => {
    const body = new Uint8Array(200_000).fill(9);
    let n = 0;
    const r = await compare(async (s) => {
      await s.put('put/reset', body);
      return Buffer.from((await s.get('put/reset')).body).equals(body);
    }, () => {
      n = 0;
      proxy.inject('reset', { rate: 1, filter: (q) => q.method === 'PUT' && n++ === 0 });
    });
    expect(r.result).to.equal(true);
    expect(r.events.slice(0, 3)).to.deep.equal(['attempt PutObject 0 200000 0', 'attempt PutObject 200 200000 0', 'finished PutObject 2']);
  });
});

describe('DirectS3: the request as the SDK sends it (plain server)', function () {
  this.timeout(30_000);
  let server: Server;
  let port: number;
  const seen: IncomingMessage[] = [];
  const answer = (req: IncomingMessage, res: ServerResponse): void => {
    seen.push(req);
    req.resume();
    req.on('end', () => {
      if (req.method === 'PUT') res.writeHead(200, { etag: '"put"', 'content-length': '0' });
      else res.writeHead(200, { 'content-length': '5', etag: '"e"', 'last-modified': 'Wed, 21 Oct 2015 07:28:00 GMT', 'x-amz-meta-mode': '33188' });
      res.end();
    });
  };
  let connections = 0;
  before(async () => {
    server = createServer(answer);
    server.on('connection', () => connections++);
    await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
    port = (server.address() as { port: number }).port;
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((res) => server.close(() => res()));
  });

  for (const sessionToken of [undefined, 'tok/en=+ x']) {
    it(`the same path as the SDK's and a valid SigV4 signature${sessionToken ? ' with a session token' : ''}`, async () => {
      const credentials = { accessKeyId: 'AKID', secretAccessKey: 'secret/key+x', ...(sessionToken ? { sessionToken } : {}) };
      const mk = (smallRequestTransport: 'direct' | 'sdk'): S3Store =>
        new S3Store({ bucket: 'bkt', endpoint: `http://127.0.0.1:${port}`, region: 'eu-west-3', credentials, readWorkers: 0, smallRequestTransport });
      const direct = mk('direct');
      const sdk = mk('sdk');
      try {
        for (const k of WEIRD_KEYS) {
          seen.length = 0;
          const a = await sdk.head(k);
          const b = await direct.head(k);
          expect(b, k).to.deep.equal(a);
          expect(b).to.deep.include({ size: 5, etag: '"e"', metadata: { mode: '33188' } });
          const [viaSdk, viaDirect] = seen as [IncomingMessage, IncomingMessage];
          expect(viaDirect.method).to.equal('HEAD');
          expect(viaDirect.headers['amz-sdk-invocation-id'], 'not through the SDK').to.equal(undefined);
          expect(viaSdk.headers['amz-sdk-invocation-id']).to.be.a('string');
          expect(viaDirect.url, k).to.equal(viaSdk.url);
          expect(viaDirect.url).to.equal(`/bkt/${encodeKey(k)}`);
          expect(viaDirect.headers.authorization).to.equal(await sdkAuthorization(viaDirect, port, credentials, 'eu-west-3'));
          expect(signedHeaders(viaDirect)).to.include.members(['host', 'x-amz-content-sha256', 'x-amz-date', ...(sessionToken ? ['x-amz-security-token'] : [])]);
        }
      } finally {
        await direct.close();
        await sdk.close();
      }
    });
  }

  it('PUT: the headers the SDK sends (but its own), the same path and query, and a valid SigV4 signature', async () => {
    const credentials = { accessKeyId: 'AKID', secretAccessKey: 'sec', sessionToken: 'tok' };
    const mk = (t: 'direct' | 'sdk'): S3Store =>
      new S3Store({ bucket: 'bkt', endpoint: `http://127.0.0.1:${port}`, credentials, readWorkers: 0, smallRequestTransport: t, directPutMaxBytes: 1 << 20, conditionalWrites: true });
    const direct = mk('direct');
    const sdk = mk('sdk');
    const sdkOwn = new Set(['user-agent', 'x-amz-user-agent', 'amz-sdk-invocation-id', 'amz-sdk-request', 'authorization', 'x-amz-date', 'connection']);
    try {
      for (const opts of [{}, { metadata: { mode: '33188', x: ' a  b ' }, contentType: 'text/plain', ifNoneMatch: '*' }, { ifMatch: '"etag"' }] as PutOptions[]) {
        seen.length = 0;
        expect(await direct.put('d/a b', new Uint8Array(5).fill(1), opts)).to.deep.equal(await sdk.put('d/a b', new Uint8Array(5).fill(1), opts));
        const [viaDirect, viaSdk] = seen as [IncomingMessage, IncomingMessage];
        expect(viaDirect.url).to.equal(viaSdk.url);
        const strip = (h: IncomingMessage['headers']): Record<string, unknown> => Object.fromEntries(Object.entries(h).filter(([k]) => !sdkOwn.has(k)));
        expect(strip(viaDirect.headers), JSON.stringify(opts)).to.deep.equal(strip(viaSdk.headers));
        expect(viaDirect.headers.authorization).to.equal(await sdkAuthorization(viaDirect, port, credentials, 'us-east-1'));
      }
    } finally {
      await direct.close();
      await sdk.close();
    }
  });

  it('by default a PUT of up to 1 MiB is sent directly, a bigger one through the SDK', async () => {
    const s = new S3Store({ bucket: 'bkt', endpoint: `http://127.0.0.1:${port}`, credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, readWorkers: 0 });
    try {
      seen.length = 0;
      await s.put('small', new Uint8Array(1 << 20));
      await s.put('big', new Uint8Array((1 << 20) + 1));
      const [small, big] = seen as [IncomingMessage, IncomingMessage];
      expect(small.method).to.equal('PUT');
      expect(small.headers['amz-sdk-invocation-id'], '1 MiB: not through the SDK').to.equal(undefined);
      expect(big.headers['amz-sdk-invocation-id'], '1 MiB + 1: through the SDK').to.be.a('string');
    } finally {
      await s.close();
    }
  });

  it('credentials that cannot be had: the provider\'s error, no attempt made, the request finished once', async () => {
    const failing = Object.assign(new Error('Could not load credentials from any providers'), { name: 'CredentialsProviderError' });
    const client = new S3Client({ endpoint: `http://127.0.0.1:${port}`, region: 'us-east-1', forcePathStyle: true, credentials: () => Promise.reject(failing) });
    const agent = undiciAgent({ connections: 1, connectionTimeoutMs: 1000, requestTimeoutMs: 1000 });
    const events: string[] = [];
    const d = new DirectS3({ client, bucket: 'bkt', agent, retry: new GatewayRetryStrategy(), observer: { attempt: (...a) => events.push(`attempt ${a.join(' ')}`), finished: (...a) => events.push(`finished ${a.join(' ')}`) } });
    try {
      seen.length = 0;
      expect(await d.usable()).to.equal(true);
      const err = await d.head('k').then(() => null, (e: unknown) => e as Error);
      expect(err).to.equal(failing);
      expect(events).to.deep.equal(['finished HeadObject 1']);
      expect(seen.length).to.equal(0);
    } finally {
      client.destroy();
      await agent.destroy();
    }
  });

  it('keeps the connection across HEADs (undici closes it after a HEAD unless told not to)', async () => {
    const s = new S3Store({ bucket: 'bkt', endpoint: `http://127.0.0.1:${port}`, credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, readWorkers: 0 });
    try {
      // (undici may open a second connection while the first one's completion is still being processed)
      await s.head('k');
      await s.head('k');
      const before = connections;
      for (let i = 0; i < 20; i++) expect(await s.head(`k${i}`)).to.deep.include({ size: 5 });
      expect(connections - before).to.equal(0);
    } finally {
      await s.close();
    }
  });

  it('a reply whose Last-Modified the SDK would reject is asked again through the SDK', async () => {
    const s = new S3Store({ bucket: 'bkt', endpoint: `http://127.0.0.1:${port}`, credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, readWorkers: 0 });
    const saved = server.listeners('request');
    server.removeAllListeners('request');
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      seen.push(req);
      res.writeHead(200, { 'content-length': '1', 'last-modified': 'not a date' });
      res.end();
    });
    try {
      seen.length = 0;
      const err = await s.head('k').then(() => null, (e: unknown) => e as StoreError);
      expect(seen.length).to.equal(2);
      expect(seen[1]!.headers['amz-sdk-invocation-id'], 'the second request is the SDK\'s').to.be.a('string');
      expect(err?.code).to.equal('EIO');
    } finally {
      server.removeAllListeners('request');
      for (const l of saved) server.on('request', l as never);
      await s.close();
    }
  });
});

/** The names in a received request's SignedHeaders. */
function signedHeaders(req: IncomingMessage): string[] {
  return /SignedHeaders=([^,]+)/.exec(String(req.headers.authorization))![1]!.split(';');
}

/** The Authorization the SDK's signer computes for what a server received (its signed headers, x-amz-date, path and query). */
async function sdkAuthorization(req: IncomingMessage, port: number, credentials: AwsCredentialIdentity, region: string): Promise<string | undefined> {
  const h = req.headers;
  const d = String(h['x-amz-date']);
  const signingDate = new Date(`${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 11)}:${d.slice(11, 13)}:${d.slice(13, 15)}Z`);
  const headers: Record<string, string> = {};
  for (const n of signedHeaders(req)) headers[n] = String(h[n]);
  const [path, q] = req.url!.split('?') as [string, string | undefined];
  const query = q === undefined ? {} : Object.fromEntries(new URLSearchParams(q));
  const signer = new SignatureV4({ credentials, region, service: 's3', sha256: Hash.bind(null, 'sha256'), uriEscapePath: false });
  const signed = await signer.sign(new HttpRequest({ method: req.method!, protocol: 'http:', hostname: '127.0.0.1', port, path, query, headers }), { signingDate });
  return signed.headers.authorization;
}
