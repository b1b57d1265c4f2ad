// The transport of the S3 client's ranged GETs: undici instead of node:http, with a body
// that can hand its chunks straight to a reader.
//
// Why: a sequential reader of a mounted file is bounded by the gateway's CPU per byte of
// GET body, and most of it was in the transport, not in S3 semantics: node:http's parser
// and the stream machinery (Readable.push, an async iterator step per 64 KiB chunk)
// before the bytes were copied into the page cache's block. undici (Node's own fetch
// underneath, maintained by the Node.js project) parses with llhttp in wasm and gives a
// dispatch handler each body chunk as a view of the socket read: with `sinkInto` the
// chunks go from there to the reader's buffer without a stream. In-process against
// s3rver (8 MiB ranged GETs, 16 in flight) the client's CPU per MiB fell by about a third
// (docs/performance-storage.md, "fs, s3").
//
// Only the transport changes: the SDK still builds, signs, retries (our strategy) and
// deserializes the request (errors come back as the usual S3 errors), and everything that
// is not a ranged GET keeps the SDK's node:http handler. Transport errors are given the
// node:http codes the SDK and `networkFailure` classify (ECONNRESET, ECONNREFUSED,
// TimeoutError), so retries and errnos are the same on both transports.
import { Readable } from 'node:stream';
import { Agent, type Dispatcher } from 'undici';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import type { HttpHandlerOptions } from '@smithy/types';

/** What the SDK hands a request handler (a subset of @smithy/protocol-http's HttpRequest). */
interface SdkRequest {
  readonly method: string;
  readonly protocol: string;
  readonly hostname: string;
  readonly port?: number;
  readonly path: string;
  readonly query?: Record<string, string | string[] | null>;
  readonly headers: Record<string, string>;
  readonly body?: unknown;
  readonly username?: string;
  readonly password?: string;
  readonly fragment?: string;
}

interface SdkResponse {
  readonly statusCode: number;
  readonly reason?: string;
  readonly headers: Record<string, string>;
  readonly body: unknown;
}

export interface RangedGetHandlerOptions {
  /** Connections per origin. */
  readonly connections: number;
  readonly connectionTimeoutMs: number;
  /** Longest wait for the headers, and between two body chunks. */
  readonly requestTimeoutMs: number;
  /** Every other request. */
  readonly fallback: NodeHttpHandler;
  /** The connections to use (shared with other users; not destroyed by `destroy`). Default: an agent of its own. */
  readonly agent?: Agent;
}

/** A chunk consumer: false stops the body (its connection is closed). */
export type ChunkSink = (chunk: Uint8Array) => boolean;

/**
 * A GET response body: a Readable for whoever reads it as a stream (the SDK's error
 * deserializer), and `sinkInto` for a reader that wants the chunks as they arrive.
 */
export class SinkableBody extends Readable {
  private controller: Dispatcher.DispatchController | null = null;
  private sink: ChunkSink | null = null;
  private settle: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private ended = false;
  private failed: Error | null = null;

  constructor() {
    super({ highWaterMark: 64 * 1024 });
  }

  /**
   * Hands every chunk (those buffered so far, then each as it arrives) to `sink` until the
   * body ends (resolves), fails (rejects), or `sink` returns false (resolves; the body is
   * destroyed, which closes its connection). Not to be mixed with stream reads.
   */
  sinkInto(sink: ChunkSink): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.failed) return reject(this.failed);
      for (let c = this.read() as Buffer | null; c !== null; c = this.read() as Buffer | null) {
        if (!sink(c)) {
          this.destroy();
          return resolve();
        }
      }
      if (this.ended) return resolve();
      if (this.destroyed) return reject(abortedError());
      this.sink = (c) => {
        if (sink(c)) return true;
        this.finish(null);
        this.destroy();
        return false;
      };
      this.settle = { resolve, reject };
      this.controller?.resume();
    });
  }

  override _read(): void {
    this.controller?.resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.ended) this.controller?.abort(err ?? abortedError());
    this.finish(err ?? (this.ended ? null : abortedError()));
    cb(err);
  }

  /** @internal (the dispatch handler) */
  attach(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
  }

  /** @internal */
  onChunk(chunk: Buffer): void {
    if (this.sink) this.sink(chunk);
    else if (!this.push(chunk)) this.controller?.pause();
  }

  /** @internal */
  onEnd(): void {
    this.ended = true;
    if (this.settle) this.finish(null);
    else this.push(null);
  }

  /** @internal */
  onFail(err: Error): void {
    this.failed = err;
    if (this.settle) this.finish(err);
    else this.destroy(err);
  }

  private finish(err: Error | null): void {
    const s = this.settle;
    this.settle = null;
    this.sink = null;
    if (!s) return;
    if (err) s.reject(err);
    else s.resolve();
  }
}

/**
 * A request handler for S3Client: GETs with a Range header over undici (bodies are
 * `SinkableBody`), everything else through `fallback`.
 */
export class RangedGetHandler {
  readonly metadata = { handlerProtocol: 'http/1.1' };
  private readonly agent: Agent;
  private readonly ownAgent: boolean;
  private readonly fallback: NodeHttpHandler;

  constructor(opts: RangedGetHandlerOptions) {
    this.fallback = opts.fallback;
    this.ownAgent = opts.agent === undefined;
    this.agent = opts.agent ?? undiciAgent(opts);
  }

  handle(request: SdkRequest, options: HttpHandlerOptions = {}): Promise<{ response: SdkResponse }> {
    if (request.method !== 'GET' || request.headers.range === undefined && request.headers.Range === undefined)
      return this.fallback.handle(request as never, options) as Promise<{ response: SdkResponse }>;
    return this.get(request, options.abortSignal as AbortSignal | undefined);
  }

  updateHttpClientConfig(key: never, value: never): void {
    this.fallback.updateHttpClientConfig(key, value);
  }

  httpHandlerConfigs(): unknown {
    return this.fallback.httpHandlerConfigs();
  }

  destroy(): void {
    this.fallback.destroy();
    if (this.ownAgent) void this.agent.destroy().catch(() => undefined);
  }

  private get(request: SdkRequest, signal: AbortSignal | undefined): Promise<{ response: SdkResponse }> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(abortedError());
      const port = request.port !== undefined ? `:${request.port}` : '';
      const auth = request.username !== undefined || request.password !== undefined ? `${request.username ?? ''}:${request.password ?? ''}@` : '';
      const origin = `${request.protocol}//${auth}${request.hostname}${port}`;
      const qs = queryString(request.query);
      const path = `${request.path}${qs ? `?${qs}` : ''}`;
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(request.headers)) if (k.toLowerCase() !== 'host') headers[k] = v;
      const body = new SinkableBody();
      let started = false;
      let controller: Dispatcher.DispatchController | null = null;
      const onAbort = (): void => controller?.abort(abortedError());
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = (): void => signal?.removeEventListener('abort', onAbort);
      this.agent.dispatch({ origin, path, method: 'GET', headers }, {
        onRequestStart(c) {
          controller = c;
          body.attach(c);
        },
        onResponseStart(_c, statusCode, h, statusMessage) {
          if (statusCode < 200) return;
          started = true;
          resolve({ response: { statusCode, ...(statusMessage ? { reason: statusMessage } : {}), headers: flatHeaders(h), body } });
        },
        onResponseData(_c, chunk) {
          body.onChunk(chunk);
        },
        onResponseEnd() {
          done();
          body.onEnd();
        },
        onResponseError(_c, err) {
          done();
          const e = asNodeError(err);
          if (started) body.onFail(e);
          else reject(e);
        },
      });
    });
  }
}

/** The undici connections of an S3 client: `connections` per origin, the client's timeouts. */
export function undiciAgent(o: { readonly connections: number; readonly connectionTimeoutMs: number; readonly requestTimeoutMs: number }): Agent {
  return new Agent({
    connections: o.connections,
    connect: { timeout: o.connectionTimeoutMs },
    headersTimeout: o.requestTimeoutMs,
    bodyTimeout: o.requestTimeoutMs,
  });
}

/** undici's reply headers as the SDK's handlers give them: one string per name (repeats joined by ", "). */
export function flatHeaders(h: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k in h) {
    const v = h[k];
    if (v !== undefined) out[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  return out;
}

/** RFC 3986 escaping, as the SDK's query builder and its greedy path labels do. */
export function escape(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function queryString(query: SdkRequest['query']): string {
  if (!query) return '';
  const parts: string[] = [];
  for (const key of Object.keys(query).sort()) {
    const v = query[key];
    const k = escape(key);
    if (Array.isArray(v)) for (const item of v) parts.push(`${k}=${escape(item)}`);
    else parts.push(v === null || v === undefined ? k : `${k}=${escape(v)}`);
  }
  return parts.join('&');
}

function abortedError(): Error {
  const e = new Error('request aborted');
  e.name = 'AbortError';
  return e;
}

/**
 * undici's errors as node:http's: the SDK retries by `code` (ECONNRESET, ECONNREFUSED,
 * EPIPE, ETIMEDOUT) and by the name TimeoutError, and S3Store maps errnos the same way.
 */
export function asNodeError(err: Error): Error {
  const u = err as Error & { code?: string; cause?: { code?: string } };
  switch (u.code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT': {
      const e = new Error(u.message, { cause: err });
      e.name = 'TimeoutError';
      return e;
    }
    case 'UND_ERR_SOCKET':
    case 'UND_ERR_CLOSED':
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH': {
      // The connection broke (a reset, or closed before the reply ended).
      const code = u.cause?.code && /^E[A-Z]+$/.test(u.cause.code) ? u.cause.code : 'ECONNRESET';
      return Object.assign(new Error(`${u.message} (${code})`, { cause: err }), { code });
    }
    case 'UND_ERR_ABORTED':
      return Object.assign(abortedError(), { cause: err });
  }
  return err;
}
