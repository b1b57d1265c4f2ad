// The fault proxy itself: each class does to a request what it claims (the reliability
// tests count on it), in front of a plain HTTP server that records what reached it.
import { expect } from 'chai';
import { createServer, request, type Server } from 'node:http';
import { FaultProxy } from '../support/fault-proxy.js';

interface Reply {
  status?: number;
  body: Buffer;
  error?: string;
  promised?: number;
}

describe('fault proxy', function () {
  this.timeout(30_000);
  let upstream: Server;
  let port: number;
  let proxy: FaultProxy;
  let reached: string[] = [];
  const BODY = Buffer.alloc(100_000, 7);

  before(async () => {
    upstream = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (b: Buffer) => chunks.push(b));
      req.on('end', () => {
        reached.push(`${req.method} ${req.url} ${Buffer.concat(chunks).length}`);
        if (req.method === 'PUT') {
          res.writeHead(200, { 'content-length': 0 });
          res.end();
        } else {
          res.writeHead(200, { 'content-length': BODY.length });
          res.end(BODY);
        }
      });
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    port = (upstream.address() as { port: number }).port;
  });
  after(async () => {
    await proxy?.close();
    upstream.closeAllConnections();
    await new Promise<void>((r) => upstream.close(() => r()));
  });
  beforeEach(async () => {
    await proxy?.close();
    proxy = await FaultProxy.start(port, { seed: 3 });
    reached = [];
  });

  function send(method: string, path: string, body?: Buffer): Promise<Reply> {
    return new Promise((resolve) => {
      const req = request({ host: '127.0.0.1', port: proxy.port, method, path, agent: false, headers: body ? { 'content-length': body.length } : {} }, (res) => {
        const chunks: Buffer[] = [];
        const promised = Number(res.headers['content-length'] ?? -1);
        res.on('data', (b: Buffer) => chunks.push(b));
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks), promised }));
        res.on('error', (e: NodeJS.ErrnoException) => resolve({ status: res.statusCode, body: Buffer.concat(chunks), error: e.code ?? e.message, promised }));
      });
      req.on('error', (e: NodeJS.ErrnoException) => resolve({ body: Buffer.alloc(0), error: e.code ?? e.message }));
      req.end(body);
    });
  }

  it('passes requests through unchanged when no fault is injected', async () => {
    const r = await send('GET', '/bkt/key');
    expect(r.status).to.equal(200);
    expect(r.body.equals(BODY)).to.equal(true);
    expect(reached).to.deep.equal(['GET /bkt/key 0']);
    expect(proxy.injected).to.equal(0);
  });

  it('error500 and slowdown503 answer with an S3 error and do not forward', async () => {
    proxy.inject('error500', { rate: 1 });
    const a = await send('PUT', '/bkt/k', Buffer.alloc(10));
    expect(a.status).to.equal(500);
    expect(a.body.toString()).to.include('<Code>InternalError</Code>');
    proxy.inject('slowdown503', { rate: 1 });
    const b = await send('GET', '/bkt/k');
    expect(b.status).to.equal(503);
    expect(b.body.toString()).to.include('<Code>SlowDown</Code>');
    expect(reached).to.deep.equal([]);
    expect(proxy.counts).to.include({ error500: 1, slowdown503: 1 });
  });

  it('latency delays the request, then forwards it', async () => {
    proxy.inject('latency', { rate: 1, latencyMs: 150 });
    const t0 = Date.now();
    const r = await send('GET', '/bkt/k');
    expect(Date.now() - t0).to.be.at.least(150);
    expect(r.body.equals(BODY)).to.equal(true);
    expect(proxy.counts.latency).to.equal(1);
  });

  it('truncate sends half of the promised body and closes', async () => {
    proxy.inject('truncate', { rate: 1 });
    const r = await send('GET', '/bkt/k');
    expect(r.promised).to.equal(BODY.length);
    expect(r.body.length).to.equal(BODY.length / 2);
    expect(r.error).to.equal('ECONNRESET'); // Node: "aborted" — the body ended short
    expect(proxy.counts.truncate).to.equal(1);
  });

  it('reset cuts an answer mid-body; a request with a body is cut on its way or carried out with its answer lost', async () => {
    proxy.inject('reset', { rate: 1 });
    const g = await send('GET', '/bkt/k');
    expect(g.error).to.equal('ECONNRESET');
    expect(g.body.length).to.be.below(BODY.length);
    const outcomes = new Set<string>();
    for (let i = 0; i < 12; i++) {
      reached = [];
      const p = await send('PUT', `/bkt/p${i}`, Buffer.alloc(200_000, 1));
      expect(p.error, 'a reset PUT never looks like a success').to.be.oneOf(['ECONNRESET', 'EPIPE']);
      outcomes.add(reached.length === 0 ? 'cut' : reached[0] === `PUT /bkt/p${i} 200000` ? 'lost answer' : `partial: ${reached[0]}`);
    }
    expect([...outcomes].sort()).to.deep.equal(['cut', 'lost answer']);
    expect(proxy.counts.reset).to.equal(13);
  });

  it('down refuses connections for the outage, then serves again on the same port', async () => {
    const outage = proxy.down(400);
    await new Promise((r) => setTimeout(r, 50));
    expect((await send('GET', '/bkt/k')).error).to.equal('ECONNREFUSED');
    await outage;
    expect((await send('GET', '/bkt/k')).status).to.equal(200);
    expect(proxy.counts.down).to.equal(1);
  });

  it('injects into about the given fraction of the eligible requests only', async () => {
    proxy.inject('error500', { rate: 0.3, filter: (r) => r.method === 'GET' });
    let failed = 0;
    for (let i = 0; i < 100; i++) if ((await send('GET', '/bkt/k')).status === 500) failed++;
    for (let i = 0; i < 10; i++) expect((await send('PUT', '/bkt/k', Buffer.alloc(1))).status).to.equal(200);
    expect(failed).to.equal(proxy.counts.error500);
    expect(failed).to.be.within(15, 45);
  });
});
