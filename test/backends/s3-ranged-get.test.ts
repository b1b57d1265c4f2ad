// The undici transport of ranged GETs (src/backends/s3-ranged-get.ts): against a plain
// HTTP server that answers as the test says (chunks, pauses, resets, silence), and through
// S3Store against s3rver on both transports (same bytes, same errnos).
import { expect } from 'chai';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { RangedGetHandler, SinkableBody } from '../../src/backends/s3-ranged-get.js';
import { S3Store } from '../../src/backends/s3-store.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { patternBytes } from '../support/tmp.js';
import { expectErrno } from './conformance.js';

type Answer = (req: IncomingMessage, res: ServerResponse) => void;

describe('ranged GETs over undici (RangedGetHandler)', function () {
  this.timeout(30_000);
  let server: Server;
  let port: number;
  let answer: Answer = (_req, res) => res.end();
  const seen: IncomingMessage[] = [];
  const handlers: RangedGetHandler[] = [];

  before(async () => {
    server = createServer((req, res) => {
      seen.push(req);
      answer(req, res);
    });
    await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
    port = (server.address() as { port: number }).port;
  });
  after(async () => {
    for (const h of handlers) h.destroy();
    server.closeAllConnections();
    await new Promise<void>((res) => server.close(() => res()));
  });
  beforeEach(() => {
    seen.length = 0;
  });

  const handler = (requestTimeoutMs = 5000, fallback = new NodeHttpHandler({})): RangedGetHandler => {
    const h = new RangedGetHandler({ fallback, connections: 4, connectionTimeoutMs: 2000, requestTimeoutMs });
    handlers.push(h);
    return h;
  };
  const request = (headers: Record<string, string> = { range: 'bytes=0-99' }, p = port) => ({
    method: 'GET', protocol: 'http:', hostname: '127.0.0.1', port: p, path: '/bucket/a%20key', query: { 'x-id': 'GetObject' }, headers,
  });
  /** Sends `parts` with a pause between them. */
  const chunked = (parts: Uint8Array[], total = parts.reduce((n, p) => n + p.length, 0)): Answer => (_req, res) => {
    res.writeHead(206, { 'content-length': String(total), etag: '"e"' });
    let i = 0;
    const next = (): void => {
      if (i === parts.length) return void res.end();
      res.write(parts[i++]);
      setTimeout(next, 5);
    };
    next();
  };

  it('sends the signed request as given (path, query, headers) and answers with status, headers and a sinkable body', async () => {
    answer = chunked([patternBytes(1, 40), patternBytes(2, 60)]);
    const { response } = await handler().handle(request({ range: 'bytes=0-99', 'x-amz-date': '20260101T000000Z' }));
    expect(response.statusCode).to.equal(206);
    expect(response.headers).to.include({ 'content-length': '100', etag: '"e"' });
    expect(response.body).to.be.instanceOf(SinkableBody);
    expect(seen[0]!.url).to.equal('/bucket/a%20key?x-id=GetObject');
    expect(seen[0]!.headers).to.include({ range: 'bytes=0-99', 'x-amz-date': '20260101T000000Z', host: `127.0.0.1:${port}` });
    const got: Uint8Array[] = [];
    await (response.body as SinkableBody).sinkInto((c) => (got.push(Uint8Array.from(c)), true));
    expect(Buffer.concat(got)).to.deep.equal(Buffer.concat([patternBytes(1, 40), patternBytes(2, 60)]));
  });

  it('sinkInto gets the chunks that arrived before it was called first, then the rest, in order', async () => {
    const parts = [patternBytes(3, 1000), patternBytes(4, 70_000), patternBytes(5, 10)];
    answer = chunked(parts);
    const { response } = await handler().handle(request());
    await new Promise((r) => setTimeout(r, 50)); // the body is partly buffered by now
    const got: Uint8Array[] = [];
    await (response.body as SinkableBody).sinkInto((c) => (got.push(Uint8Array.from(c)), true));
    expect(Buffer.concat(got)).to.deep.equal(Buffer.concat(parts));
    // A body that ended before sinkInto was called still hands over all of it.
    answer = chunked([patternBytes(6, 500)]);
    const r2 = await handler().handle(request());
    await new Promise((r) => setTimeout(r, 50));
    const got2: Uint8Array[] = [];
    await (r2.response.body as SinkableBody).sinkInto((c) => (got2.push(Uint8Array.from(c)), true));
    expect(Buffer.concat(got2)).to.deep.equal(Buffer.from(patternBytes(6, 500)));
  });

  it('a sink that returns false ends the read and closes the connection', async () => {
    let closed = false;
    answer = (req, res) => {
      req.socket.on('close', () => (closed = true));
      chunked(Array.from({ length: 50 }, (_, i) => patternBytes(i, 10_000)))(req, res);
    };
    const { response } = await handler().handle(request());
    let n = 0;
    await (response.body as SinkableBody).sinkInto((c) => (n += c.length) < 30_000);
    expect(n).to.be.below(100_000);
    for (let i = 0; i < 100 && !closed; i++) await new Promise((r) => setTimeout(r, 10));
    expect(closed).to.equal(true);
  });

  it('the body reads as a stream too (the SDK deserializes error replies from it)', async () => {
    const parts = [patternBytes(7, 100), patternBytes(8, 200)];
    answer = chunked(parts);
    const { response } = await handler().handle(request());
    const got: Buffer[] = [];
    for await (const c of response.body as SinkableBody) got.push(c as Buffer);
    expect(Buffer.concat(got)).to.deep.equal(Buffer.concat(parts));
  });

  it('transport errors carry the codes node:http gives (reset mid-body ECONNRESET, refused ECONNREFUSED, silence TimeoutError)', async () => {
    answer = (req, res) => {
      res.writeHead(206, { 'content-length': '100000' });
      res.write(patternBytes(9, 1000));
      setTimeout(() => req.socket.resetAndDestroy(), 20);
    };
    const { response } = await handler().handle(request());
    const err = await (response.body as SinkableBody).sinkInto(() => true).then(() => null, (e: unknown) => e as { code?: string });
    expect(err?.code).to.equal('ECONNRESET');

    const closed = createTcpServer();
    await new Promise<void>((res) => closed.listen(0, '127.0.0.1', res));
    const deadPort = (closed.address() as { port: number }).port;
    await new Promise<void>((res) => closed.close(() => res()));
    const refused = await handler().handle(request(undefined, deadPort)).then(() => null, (e: unknown) => e as { code?: string });
    expect(refused?.code).to.equal('ECONNREFUSED');

    answer = () => undefined; // never answers
    const silent = await handler(200).handle(request()).then(() => null, (e: unknown) => e as Error);
    expect(silent?.name).to.equal('TimeoutError');
  });

  it('requests that are not ranged GETs go to the fallback handler', async () => {
    const calls: string[] = [];
    const fallback = new NodeHttpHandler({});
    const orig = fallback.handle.bind(fallback);
    fallback.handle = (req, opts) => (calls.push(req.method), orig(req, opts));
    answer = (_req, res) => res.end('ok');
    const h = handler(5000, fallback);
    await h.handle({ ...request({}), method: 'GET' });
    await h.handle({ ...request({}), method: 'HEAD' });
    await h.handle(request());
    expect(calls).to.deep.equal(['GET', 'HEAD']);
  });
});

describe('S3Store ranged reads on both transports (s3rver)', function () {
  this.timeout(60_000);
  let s3: S3rver;
  before(async () => {
    s3 = await startS3rver({ buckets: ['rg'] });
  });
  after(async () => {
    await s3?.stop();
  });

  for (const transport of ['undici', 'node-http'] as const) {
    it(`${transport}: getInto and ranged get return the same bytes, a missing key ENOENT`, async () => {
      const store = new S3Store({ bucket: 'rg', endpoint: s3.endpoint, credentials: s3.credentials, rangedGetTransport: transport });
      try {
        const data = patternBytes(11, 3 * 1024 * 1024 + 17);
        await store.put('big', data);
        const target = new Uint8Array(2 * 1024 * 1024);
        const r = await store.getInto('big', 1000, target);
        expect(r.bytesRead).to.equal(target.length);
        expect(Buffer.from(target)).to.deep.equal(Buffer.from(data.subarray(1000, 1000 + target.length)));
        const tail = await store.get('big', { range: { offset: data.length - 10, length: 100 } });
        expect(Buffer.from(tail.body)).to.deep.equal(Buffer.from(data.subarray(data.length - 10)));
        await expectErrno(store.getInto('missing', 0, new Uint8Array(10)), 'ENOENT');
        // Many at once (more than the connections): all complete with the right bytes.
        const reads = await Promise.all(Array.from({ length: 40 }, async (_, i) => {
          const t = new Uint8Array(65_536 + i);
          await store.getInto('big', i * 50_000, t);
          return Buffer.from(t).equals(Buffer.from(data.subarray(i * 50_000, i * 50_000 + t.length)));
        }));
        expect(reads.every(Boolean)).to.equal(true);
      } finally {
        await store.close();
      }
    });
  }
});
