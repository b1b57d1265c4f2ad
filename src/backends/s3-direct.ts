// HeadObject and small PutObjects without the SDK's per-request machinery: signed by the
// SDK's own signer (@smithy/signature-v4) called directly, sent over undici, the reply
// read directly.
//
// Why: `ls -l` of a directory of files whose mode/uid/gid/mtime live in user metadata
// (which a listing does not return) is one HEAD per file, one after the other, and the
// gateway's CPU per HEAD was about 0.8 ms — as much as s3rver's, four times s3fs's. A
// CPU profile spread it thinly over the SDK: endpoint resolution, the schema serializer
// and deserializer, the middleware chain, the signer's request cloning and header
// canonicalization, node:http's ClientRequest and parser. A HEAD has no body, four headers
// to sign and a reply made only of headers; a small PUT adds its body's sha256 and a few
// headers. Creating many small files is one PUT each, with the same overhead.
//
// What stays the SDK's, so that behaviour is the same as the SDK path:
// - the endpoint: resolved once by the SDK's own endpoint rules for the bucket (path or
//   virtual-host style, custom endpoint, FIPS/dual-stack), with the signing region and
//   name its auth scheme gives; an endpoint that wants anything but plain SigV4 (S3
//   Express, multi-region access points) or extra headers gets no direct requests;
// - the signature: @smithy/signature-v4 as S3Client configures it (S3 paths not escaped
//   twice), one signer per set of credentials, which caches the day's signing key
//   (hand-written SigV4 measured ~15% less CPU per HEAD; not worth owning a signer);
// - credentials: the client's memoized provider (refreshes expiring ones);
// - the clock: the client's systemClockOffset, updated from the reply's Date header as
//   the SDK's signer does (a skew-corrected failure is retried);
// - retries: the client's retry strategy (s3-retry.ts) with the SDK's own classification
//   (isThrottlingError / isTransientError from @smithy/core/retry) of errors shaped as
//   the SDK shapes them: named by the error body's <Code> (a HEAD's reply has no body:
//   "NotFound" for 404, else "Unknown"), with its <Message> (else "UnknownError") and
//   $metadata.httpStatusCode; transport errors carry node:http's codes and names;
// - metrics: the observer hears one `attempt` per attempt and one `finished` per request,
//   under the API's operation names, as from the SDK middleware (s3-metrics.ts).
import { createHash } from 'node:crypto';
import type { Agent, Dispatcher } from 'undici';
import { HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { getEndpointFromInstructions } from '@smithy/core/endpoints';
import { getRetryAfterHint, isServerError, isThrottlingError, isTransientError } from '@smithy/core/retry';
import { Hash } from '@smithy/core/serde';
import { SignatureV4 } from '@smithy/signature-v4';
import type { AwsCredentialIdentity, RetryErrorInfo, RetryErrorType, RetryStrategyV2 } from '@smithy/types';
import type { S3Observer } from '../metrics/observer.js';
import { asNodeError, escape, flatHeaders } from './s3-ranged-get.js';

/** The SDK's node:crypto SHA-256 (and HMAC) for the signer. */
const Sha256 = Hash.bind(null, 'sha256');
/** sha256 of an empty payload (a HEAD's), hex. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
/** The SDK's threshold: a server clock this far from ours (ms) resets the client's offset. */
const CLOCK_SKEW_MS = 300_000;
/** Error bodies read for their <Code> and <Message>; more is dropped. */
const MAX_ERROR_BODY = 64 * 1024;

/** A reply: status, headers (names lower-case), and the body of an error reply (text). */
export interface DirectReply {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
}

/** The resolved place and signing scope of the bucket's objects. */
interface Target {
  readonly origin: string;
  /** Path of the bucket (no trailing slash); the encoded key follows after a `/`. */
  readonly basePath: string;
  /** The Host header undici sends for `origin` (signed). */
  readonly host: string;
  readonly protocol: string;
  readonly hostname: string;
  readonly region: string;
  readonly service: string;
}

/** The parts of S3Client's resolved config used here. */
interface ClientConfig {
  credentials(): Promise<AwsCredentialIdentity>;
  systemClockOffset?: number;
}

export interface DirectS3Options {
  readonly client: S3Client;
  readonly bucket: string;
  readonly agent: Agent;
  readonly retry: RetryStrategyV2;
  readonly observer?: S3Observer;
}

/** A PUT's headers besides those signed anyway (names lower-case: content-type, if-match, if-none-match, x-amz-meta-*). */
export type PutHeaders = Readonly<Record<string, string>>;

/**
 * Direct requests on one bucket's objects. Replies other than 2xx reject with an
 * SDK-shaped error (after retries) that S3Store.mapError classifies as it does the SDK's;
 * `head` resolves null on 404 instead. `usable()` says whether this endpoint can be
 * served at all.
 */
export class DirectS3 {
  private target: Target | null | undefined;
  private resolving: Promise<Target | null> | null = null;
  /** The signer, and the credentials it signs with (a new pair when they change: rotation). */
  private signer: { readonly creds: AwsCredentialIdentity; readonly v4: SignatureV4 } | null = null;

  constructor(private readonly o: DirectS3Options) {}

  /** False when the endpoint needs what only the SDK does (then use the SDK's commands). */
  async usable(): Promise<boolean> {
    if (this.target === undefined) {
      this.resolving ??= this.resolve().then(
        (t) => (this.target = t),
        () => (this.target = null),
      );
      await this.resolving;
    }
    return this.target !== null;
  }

  /** HeadObject (call after `usable()` resolved true): the reply, or null for a missing key. */
  async head(key: string): Promise<DirectReply | null> {
    return this.request('HeadObject', 'HEAD', key, {}, null, true);
  }

  /** PutObject of `body` in one request (call after `usable()` resolved true): the reply's ETag. */
  async put(key: string, body: Uint8Array, headers: PutHeaders): Promise<string | undefined> {
    const reply = await this.request('PutObject', 'PUT', key, headers, body, false);
    return reply!.headers.etag;
  }

  private async request(op: string, method: 'HEAD' | 'PUT', key: string, extra: PutHeaders, body: Uint8Array | null, nullOn404: boolean): Promise<DirectReply | null> {
    const t = this.target;
    if (!t) throw new Error('DirectS3: endpoint not resolved');
    // The SDK's path: the key's segments encoded, and PutObject's `?x-id=PutObject` (not signed differently: part of the canonical query).
    const path = `${t.basePath}/${encodeKey(key)}`;
    const query = method === 'PUT' ? 'x-id=PutObject' : '';
    const payloadHash = body === null || body.length === 0 ? EMPTY_SHA256 : createHash('sha256').update(body).digest('hex');
    const sent = body?.length ?? 0;
    let token = await this.o.retry.acquireInitialRetryToken('');
    for (let attempts = 1; ; attempts++) {
      let err: SdkShapedError;
      let creds: AwsCredentialIdentity | null = null;
      try {
        creds = await (this.o.client.config as unknown as ClientConfig).credentials();
        const reply = await this.attempt(t, method, path, query, extra, body, payloadHash, creds);
        // A HEAD's Content-Length is the object's, not bytes that came over the wire.
        this.o.observer?.attempt(op, reply.status, sent, method === 'HEAD' ? 0 : contentLength(reply.headers));
        if (reply.status >= 200 && reply.status < 300) {
          this.skew(reply.headers.date, null);
          this.o.retry.recordSuccess(token);
          this.o.observer?.finished(op, attempts);
          return reply;
        }
        err = replyError(reply, reply.body);
        this.skew(reply.headers.date, err);
      } catch (e) {
        // No credentials: no attempt was made (as in the SDK, where signing precedes sending).
        if (creds !== null) this.o.observer?.attempt(op, 0, sent, 0);
        err = e as SdkShapedError;
      }
      if (nullOn404 && err.$metadata?.httpStatusCode === 404) {
        // Not retried by the SDK either (a client error): the key is missing.
        this.o.observer?.finished(op, attempts);
        return null;
      }
      try {
        token = await this.o.retry.refreshRetryTokenForRetry(token, retryInfo(err));
      } catch {
        err.$metadata = { ...err.$metadata, attempts };
        this.o.observer?.finished(op, attempts);
        throw err;
      }
    }
  }

  private async resolve(): Promise<Target | null> {
    const config = this.o.client.config as unknown as Parameters<typeof getEndpointFromInstructions>[2];
    // The key does not take part in S3's endpoint rules; one is given as the command would.
    const ep = await getEndpointFromInstructions({ Bucket: this.o.bucket, Key: 'k' }, HeadObjectCommand as never, config);
    const schemes = (ep.properties?.authSchemes ?? []) as { name?: string; signingRegion?: string; signingName?: string }[];
    const scheme = schemes[0];
    if (!scheme || scheme.name !== 'sigv4' || !scheme.signingRegion || Object.keys(ep.headers ?? {}).length > 0) return null;
    const url = ep.url;
    if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.search || url.username || url.password) return null;
    return {
      origin: url.origin,
      basePath: url.pathname.replace(/\/+$/, ''),
      host: url.host,
      protocol: url.protocol,
      hostname: url.hostname,
      region: scheme.signingRegion,
      service: scheme.signingName ?? 's3',
    };
  }

  private async attempt(
    t: Target, method: 'HEAD' | 'PUT', path: string, query: string, extra: PutHeaders, body: Uint8Array | null, payloadHash: string, creds: AwsCredentialIdentity,
  ): Promise<DirectReply & { body: string }> {
    const config = this.o.client.config as unknown as ClientConfig;
    const now = new Date(Date.now() + (config.systemClockOffset ?? 0));
    const headers = await this.sign(t, method, path, query, extra, body === null ? null : body.length, payloadHash, creds, now);
    return new Promise((resolve, reject) => {
      let status = 0;
      let replyHeaders: Record<string, string> = {};
      let text = '';
      const handler: Dispatcher.DispatchHandler = {
        // (undici takes a handler for its new API by this method's presence)
        onRequestStart() {},
        onResponseStart(_c, statusCode, h) {
          status = statusCode;
          if (statusCode >= 200) replyHeaders = flatHeaders(h);
        },
        onResponseData(_c, chunk) {
          // Only error bodies matter (their <Code>); a success's body, if any, is dropped.
          if (status >= 300 && text.length < MAX_ERROR_BODY) text += chunk.toString('utf8');
        },
        onResponseEnd() {
          if (status >= 200) resolve({ status, headers: replyHeaders, body: text });
        },
        onResponseError(_c, e) {
          const n = asNodeError(e) as Error & { code?: string };
          // node-http-handler's naming of these (the SDK retries both by name and by code).
          if (n.code === 'ECONNRESET' || n.code === 'EPIPE' || n.code === 'ETIMEDOUT') n.name = 'TimeoutError';
          reject(n);
        },
      };
      // reset: false — undici closes the connection after every HEAD unless told otherwise (in
      // case a broken server sends a body after all); a connect per HEAD would cost more than
      // the rest of the exchange. S3 servers answer HEAD with headers only.
      this.o.agent.dispatch(
        { origin: t.origin, path: query ? `${path}?${query}` : path, method, headers, ...(body !== null ? { body } : {}), reset: false },
        handler,
      );
    });
  }

  /**
   * SigV4 headers of a request of `path` (already encoded; S3 signs it as sent) with the
   * query `query` (`name=value`, already in canonical form) and `extra` headers (lower-case
   * names): the SDK's own signer (@smithy/signature-v4, as S3Client configures it: S3 paths
   * are not escaped twice), one per set of credentials (signerFor), which caches the signing key per day.
   */
  private async sign(
    t: Target, method: string, path: string, query: string, extra: PutHeaders, length: number | null, payloadHash: string, creds: AwsCredentialIdentity, now: Date,
  ): Promise<Record<string, string>> {
    const headers: Record<string, string> = { ...extra, host: t.host, 'x-amz-content-sha256': payloadHash };
    if (length !== null) headers['content-length'] = String(length);
    const eq = query.indexOf('=');
    const signed = await this.signerFor(t, creds).sign(
      { method, protocol: t.protocol, hostname: t.hostname, path, query: query ? { [query.slice(0, eq)]: query.slice(eq + 1) } : {}, headers },
      { signingDate: now },
    );
    // undici sends Host for the origin itself.
    const { host: _host, ...out } = signed.headers;
    return out;
  }

  private signerFor(t: Target, creds: AwsCredentialIdentity): SignatureV4 {
    if (this.signer?.creds !== creds) {
      this.signer = { creds, v4: new SignatureV4({ credentials: creds, region: t.region, service: t.service, sha256: Sha256, uriEscapePath: false }) };
    }
    return this.signer.v4;
  }

  /** As the SDK's signer: a server clock 5 minutes off ours resets the client's offset (and makes the error retryable). */
  private skew(date: string | undefined, err: SdkShapedError | null): void {
    if (!date) return;
    const config = this.o.client.config as unknown as ClientConfig;
    const server = Date.parse(date);
    if (!Number.isFinite(server)) return;
    const offset = config.systemClockOffset ?? 0;
    if (Math.abs(Date.now() + offset - server) < CLOCK_SKEW_MS) return;
    config.systemClockOffset = server - Date.now();
    if (err) err.$metadata = { ...err.$metadata, clockSkewCorrected: true };
  }
}

interface SdkShapedError extends Error {
  Code?: string;
  $metadata?: { httpStatusCode?: number; attempts?: number; clockSkewCorrected?: boolean; requestId?: string };
  $response?: { statusCode: number; headers: Record<string, string> };
  $fault?: 'client' | 'server';
}

/** The error the SDK's S3 deserializer makes of a reply that is not 2xx: named by the body's <Code>. */
function replyError(reply: DirectReply, body: string): SdkShapedError {
  const code = xmlElement(body, 'Code');
  const name = code ?? (reply.status === 404 ? 'NotFound' : 'Unknown');
  const e = new Error(xmlElement(body, 'Message') ?? 'UnknownError') as SdkShapedError;
  e.name = name;
  if (code !== undefined) e.Code = code;
  e.$fault = reply.status >= 500 ? 'server' : 'client';
  const requestId = reply.headers['x-amz-request-id'] ?? xmlElement(body, 'RequestId');
  e.$metadata = { httpStatusCode: reply.status, ...(requestId ? { requestId } : {}) };
  e.$response = { statusCode: reply.status, headers: { ...reply.headers } };
  return e;
}

/** The text of the first <name> element of an S3 error body (entities decoded), if any. */
function xmlElement(xml: string, name: string): string | undefined {
  const m = new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml);
  if (!m) return undefined;
  return m[1]!.replace(/&(lt|gt|quot|apos|amp|#x[0-9a-fA-F]+|#[0-9]+);/g, (_all, ent: string) => {
    switch (ent) {
      case 'lt': return '<';
      case 'gt': return '>';
      case 'quot': return '"';
      case 'apos': return "'";
      case 'amp': return '&';
    }
    return String.fromCodePoint(ent[1] === 'x' ? parseInt(ent.slice(2), 16) : parseInt(ent.slice(1), 10));
  });
}

/** What the SDK's retry middleware hands the strategy. */
function retryInfo(err: SdkShapedError): RetryErrorInfo {
  const e = err as never;
  const errorType: RetryErrorType = isThrottlingError(e) ? 'THROTTLING' : isTransientError(e) ? 'TRANSIENT' : isServerError(e) ? 'SERVER_ERROR' : 'CLIENT_ERROR';
  const hint = err.$response ? getRetryAfterHint(err.$response as never) : undefined;
  return { errorType, ...(hint ? { retryAfterHint: hint } : {}) } as RetryErrorInfo;
}

function contentLength(h: Readonly<Record<string, string>>): number {
  const v = Number(h['content-length'] ?? 0);
  return Number.isFinite(v) && v > 0 ? v : 0;
}

/** The SDK's encoding of a greedy label (`/{Key+}`): each segment percent-encoded RFC 3986-strictly, slashes kept. */
export function encodeKey(key: string): string {
  let out = '';
  let start = 0;
  for (;;) {
    const slash = key.indexOf('/', start);
    const seg = slash < 0 ? key.slice(start) : key.slice(start, slash);
    out += /^[A-Za-z0-9\-._~]*$/.test(seg) ? seg : escape(seg);
    if (slash < 0) return out;
    out += '/';
    start = slash + 1;
  }
}
