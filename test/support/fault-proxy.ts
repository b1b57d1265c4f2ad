// A fault-injecting HTTP proxy to put between a gateway and s3rver (layer 5 of the tests):
//
//   const proxy = await FaultProxy.start(s3.port);
//   ... vhost-s3 --endpoint proxy.endpoint ...
//   proxy.inject('error500', { rate: 0.3 });   // 30% of requests answered 500 InternalError
//   await proxy.down(2000);                    // the store is gone for 2 s (refused, then back)
//   proxy.inject(null);                        // pass everything through again
//   proxy.counts.error500                      // faults injected so far, per class
//   await proxy.close();
//
// Fault classes (each counted when it actually happened to a request):
// - error500     500 InternalError, the request is not forwarded
// - slowdown503  503 SlowDown, not forwarded
// - latency      the request waits `latencyMs` (up to twice that, random) before it is forwarded
// - reset        the connection is reset (RST) mid-body: for half of the requests with a
//                body after half of it arrived (nothing is forwarded, so nothing is stored);
//                otherwise after half of the response body, or, when the response has none,
//                instead of it (the store carried the request out, the client never hears)
// - truncate     the response promises its Content-Length, sends half of the body and closes
//                the connection (FIN); responses without a body are passed through and not counted
// - down         (`down(ms)`) the listener closes and every open connection is reset: new
//                connections are refused until it listens again on the same port
//
// Faults are drawn per request from a seeded generator, so a failing run can be repeated.
// The explicit `failNext`/`cutNextGets` plans serve tests that need exact request counts.
import { createServer, request, Agent, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { uniform } from './random.js';

export type FaultClass = 'error500' | 'slowdown503' | 'latency' | 'reset' | 'truncate' | 'down';
export const FAULT_CLASSES: readonly FaultClass[] = ['error500', 'slowdown503', 'latency', 'reset', 'truncate', 'down'];

export interface InjectOptions {
  /** Fraction of eligible requests that get the fault. Default 0.25. */
  readonly rate?: number;
  /** For latency: the base delay (each delayed request waits base..2×base). Default 100 ms. */
  readonly latencyMs?: number;
  /** Which requests are eligible (default: all). */
  readonly filter?: (req: SeenRequest) => boolean;
}

export interface SeenRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
}

export type FaultCounts = Record<FaultClass, number>;

/** An S3 error document as S3 sends it. */
function s3Error(res: ServerResponse, status: number, code: string): void {
  const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected by the test proxy</Message><RequestId>fault</RequestId></Error>`;
  res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** Object GETs (not listings, not other bucket sub-resources). */
export function isObjectGet(r: SeenRequest): boolean {
  if (r.method !== 'GET') return false;
  const path = r.url.split('?')[0]!;
  return path.split('/').filter(Boolean).length >= 2 && !/[?&](list-type|uploads|uploadId)\b/.test(r.url);
}

export class FaultProxy {
  readonly counts: FaultCounts = { error500: 0, slowdown503: 0, latency: 0, reset: 0, truncate: 0, down: 0 };
  /** Requests that reached the proxy. */
  requests = 0;
  /** Requests seen (only while `record` is on). */
  seen: SeenRequest[] = [];
  record = false;
  private active: { cls: FaultClass; rate: number; latencyMs: number; filter?: (r: SeenRequest) => boolean } | null = null;
  private explicit = { fail: 0, failStatus: 503, failCode: 'SlowDown', cut: 0, cutAfter: 0 };
  private readonly sockets = new Set<Socket>();
  private readonly upstream = new Agent({ keepAlive: true, maxSockets: 64 });
  private readonly random: () => number;
  private listening = true;
  private closed = false;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly target: { host: string; port: number },
    seed: number,
  ) {
    this.random = uniform((seed * 2654435761) >>> 0);
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  /** A proxy on 127.0.0.1 (a port the kernel picks) in front of `upstreamPort`. */
  static async start(upstreamPort: number, opts: { host?: string; seed?: number } = {}): Promise<FaultProxy> {
    let self: FaultProxy | null = null;
    const server = createServer((req, res) => self!.handle(req, res));
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const port = (server.address() as { port: number }).port;
    self = new FaultProxy(server, port, { host: opts.host ?? '127.0.0.1', port: upstreamPort }, opts.seed ?? 1);
    return self;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Injects `cls` into a fraction of the requests from now on; null passes everything through. */
  inject(cls: Exclude<FaultClass, 'down'> | null, o: InjectOptions = {}): void {
    this.active = cls === null ? null : { cls, rate: o.rate ?? 0.25, latencyMs: o.latencyMs ?? 100, ...(o.filter ? { filter: o.filter } : {}) };
  }

  /** Answers the next `n` requests with `status` and the S3 error `code`. */
  failNext(n: number, status = 503, code = 'SlowDown'): void {
    Object.assign(this.explicit, { fail: n, failStatus: status, failCode: code });
  }

  /** Cuts the next `n` successful object GET bodies after `afterBytes` bytes (the connection is destroyed). */
  cutNextGets(n: number, afterBytes: number): void {
    Object.assign(this.explicit, { cut: n, cutAfter: afterBytes });
  }

  /** Clears every plan (random and explicit) and the record of seen requests. */
  reset(): void {
    this.active = null;
    this.explicit = { fail: 0, failStatus: 503, failCode: 'SlowDown', cut: 0, cutAfter: 0 };
    this.seen = [];
  }

  /**
   * The store is unreachable for `ms`: the listener closes (connections are refused), every
   * open connection is reset, and after `ms` it listens again on the same port. Counted once.
   */
  async down(ms: number): Promise<void> {
    if (!this.listening || this.closed) return;
    this.listening = false;
    this.counts.down++;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.resetAndDestroy();
    await closed;
    await new Promise((resolve) => setTimeout(resolve, ms));
    if (this.closed) return;
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.port, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.listening = true;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.sockets) s.destroy();
    if (this.listening) await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.upstream.destroy();
  }

  /** Total faults injected (all classes). */
  get injected(): number {
    return FAULT_CLASSES.reduce((n, c) => n + this.counts[c], 0);
  }


  private handle(req: IncomingMessage, res: ServerResponse): void {
    this.requests++;
    const seen: SeenRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers };
    if (this.record) this.seen.push(seen);
    req.on('error', () => undefined);
    res.on('error', () => undefined);

    if (this.explicit.fail > 0) {
      this.explicit.fail--;
      req.resume();
      return s3Error(res, this.explicit.failStatus, this.explicit.failCode);
    }
    const a = this.active;
    const fault = a && (!a.filter || a.filter(seen)) && this.random() < a.rate ? a.cls : null;
    switch (fault) {
      case 'error500':
        this.counts.error500++;
        req.resume();
        return s3Error(res, 500, 'InternalError');
      case 'slowdown503':
        this.counts.slowdown503++;
        req.resume();
        return s3Error(res, 503, 'SlowDown');
      case 'latency': {
        this.counts.latency++;
        req.pause();
        const ms = a!.latencyMs * (1 + this.random());
        setTimeout(() => this.forward(req, res, seen, null), ms);
        return;
      }
      case 'reset': {
        const length = Number(req.headers['content-length'] ?? 0);
        // A request with a body: half of the time it is cut off on its way (never reaches the
        // store), half of the time it is carried out and the answer is lost (a retry repeats it).
        if (length > 0 && this.random() < 0.5) {
          // Half the request body arrives, then the connection is reset: nothing is forwarded.
          this.counts.reset++;
          let got = 0;
          req.on('data', (b: Buffer) => {
            got += b.length;
            if (got >= length / 2) req.socket.resetAndDestroy();
          });
          return;
        }
        return this.forward(req, res, seen, 'reset');
      }
      case 'truncate':
        return this.forward(req, res, seen, 'truncate');
      default:
        return this.forward(req, res, seen, null);
    }
  }

  private forward(req: IncomingMessage, res: ServerResponse, seen: SeenRequest, cut: 'reset' | 'truncate' | null): void {
    const up = request({ host: this.target.host, port: this.target.port, method: req.method, path: req.url, headers: req.headers, agent: this.upstream }, (ur) => {
      const status = ur.statusCode ?? 502;
      const length = Number(ur.headers['content-length'] ?? -1);
      const explicitCut = this.explicit.cut > 0 && isObjectGet(seen) && (status === 200 || status === 206);
      if (explicitCut) this.explicit.cut--;
      const keep = explicitCut ? this.explicit.cutAfter : cut !== null && length > 0 ? Math.floor(length / 2) : -1;
      if (cut === 'reset' && length <= 0) {
        // Nothing to cut: the connection is reset before the reply.
        this.counts.reset++;
        ur.destroy();
        return req.socket.resetAndDestroy();
      }
      res.writeHead(status, ur.headers);
      if (keep < 0) {
        ur.pipe(res);
        return;
      }
      if (cut !== null) this.counts[cut]++;
      const end = (): void => {
        ur.destroy();
        if (cut === 'truncate') res.socket?.end();
        else if (cut === 'reset') res.socket?.resetAndDestroy();
        else res.socket?.destroy();
      };
      let sent = 0;
      let done = false;
      ur.on('data', (chunk: Buffer) => {
        if (done) return;
        const room = keep - sent;
        if (chunk.length < room) {
          res.write(chunk);
          sent += chunk.length;
          return;
        }
        done = true;
        if (room > 0) res.write(chunk.subarray(0, room), end);
        else end();
      });
      ur.on('end', () => {
        if (!done) {
          done = true;
          end();
        }
      });
    });
    up.on('error', () => res.destroy());
    up.on('response', (ur) => ur.on('error', () => res.destroy()));
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  }
}
