// ObjectStore on any S3-compatible server, with @aws-sdk/client-s3.
//
// Client settings and why:
// - Checksums: `requestChecksumCalculation` / `responseChecksumValidation` default to
//   "WHEN_REQUIRED" (overridable). SDK v3's default adds flexible checksums with
//   aws-chunked bodies, which many S3-compatible servers store as garbage.
// - Retries: the SDK's retry middleware (it classifies SlowDown/throttling/429,
//   500/502/503/504, timeouts and connection resets/refusals as retryable and re-signs
//   every attempt) with our strategy (s3-retry.ts): `maxAttempts` (default 10), capped
//   exponential backoff with full jitter, and a client-wide retry budget that a store
//   failing a third of its requests does not empty and that refills with time — the
//   SDK's own budget runs dry at such rates and turns every later fault into EIO. A
//   second retry loop of our own would multiply attempts. What the SDK cannot retry — a body
//   that breaks after the headers arrived — is resumed here (`read`, with If-Match so the
//   resumed bytes belong to the same version).
// - Bodies we send are always in memory (Uint8Array), so every attempt can resend them;
//   large files go through multipart (`putLarge`) part by part.
// - Per-request CPU: `cacheMiddleware` (the SDK builds the middleware stack once per
//   command type): a listing of 10,000 files without metadata in the listing is 10,000
//   HEADs, and the client's CPU per HEAD is what a busy machine makes us wait for. HEADs
//   and small PUTs skip the SDK's pipeline (`smallRequestTransport: 'direct'`,
//   s3-direct.ts): signed by the SDK's signer called directly, sent over undici, the reply
//   read directly, with the SDK's endpoint rules, credentials, retry classification and
//   our strategy — ~1.0 → 0.32 ms of client CPU per HEAD against s3rver.
// - Concurrency: a p-queue bounds requests in flight (default 32); a request holds its
//   slot until its response body is consumed. A keep-alive agent with maxSockets equal to
//   that bound reuses connections instead of paying a handshake per request.
// - Credentials: explicit ones, or the SDK's default chain (AWS_ACCESS_KEY_ID / …
//   environment variables, shared config/credentials files, SSO, container/instance
//   metadata). Region: option, AWS_REGION/AWS_DEFAULT_REGION, else us-east-1 when an
//   endpoint is given (S3-compatible servers), else the SDK's profile lookup.
//
// Server quirks handled here rather than depended on:
// - Never sends `Range: bytes=0-0` (s3rver answers with the whole object): a 1-byte read
//   at 0 asks for bytes=0-1 and uses the first byte. Never sends suffix ranges.
// - Uses the reply's Content-Range to place the bytes, so a server that ignores Range
//   (200 with the whole object) or returns more than asked still gives correct data.
// - A ranged GET of an empty object: S3 says 416, s3rver says 206 "bytes 0-0/0" with
//   Content-Length 1 and no body; both read as 0 bytes (the s3rver body is not waited for).
// - HEAD cannot tell a missing key from a missing bucket (404 without a body): the first
//   such 404 checks the bucket once (HeadBucket).
// - Conditional writes are feature-detected (`detectCapabilities`): s3rver ignores
//   If-None-Match, and a store that pretends to honour it must not be trusted with leases.
import { randomBytes } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  UploadPartCopyCommand,
  type GetObjectCommandOutput,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import PQueue from 'p-queue';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import type { Agent as UndiciAgent } from 'undici';
import { RangedGetHandler, SinkableBody, undiciAgent } from './s3-ranged-get.js';
import { DirectS3, type DirectReply } from './s3-direct.js';
import { S3ReadWorkers } from './s3-read-worker.js';
import { silentLogger, type Logger } from '../util/log.js';
import type { ErrnoName } from '../util/errors.js';
import type { S3Observer } from '../metrics/observer.js';
import { observeS3Client } from './s3-metrics.js';
import { DEFAULT_RETRY_POLICY, GatewayRetryStrategy, type RetryPolicy } from './s3-retry.js';
import {
  DELETE_BATCH,
  MAX_PART_SIZE,
  MAX_PARTS,
  MIN_PART_SIZE,
  PROBE_NAME_PREFIX,
  StoreError,
  normalizeMetadata,
  putLarge,
  requireConditional,
  validateKey,
  validateListOptions,
  validatePartList,
  validatePartNumber,
  validateRange,
  type ByteRange,
  type CompleteOptions,
  type CompletedPart,
  type PartCopySource,
  type CopyOptions,
  type GetResult,
  type ListOptions,
  type ListPage,
  type Metadata,
  type MultipartOptions,
  type ObjectHead,
  type ObjectStore,
  type PartSource,
  type PutBody,
  type PutOptions,
  type PutResult,
  type ReadIntoResult,
  type StoreCapabilities,
} from './object-store.js';

export type ChecksumMode = 'WHEN_REQUIRED' | 'WHEN_SUPPORTED';

export interface S3StoreOptions {
  readonly bucket: string;
  /** e.g. http://127.0.0.1:9000; absent: AWS's endpoint for the region. */
  readonly endpoint?: string;
  readonly region?: string;
  /** Default: true when `endpoint` is given (most S3-compatible servers), else false. */
  readonly forcePathStyle?: boolean;
  /** Absent: the SDK's default chain (AWS_* environment variables, profiles, instance metadata). */
  readonly credentials?: { readonly accessKeyId: string; readonly secretAccessKey: string; readonly sessionToken?: string };
  readonly requestChecksumCalculation?: ChecksumMode;
  readonly responseChecksumValidation?: ChecksumMode;
  /** Attempts per request including the first. Default 10 (DEFAULT_RETRY_POLICY). */
  readonly maxAttempts?: number;
  /** The rest of the retry policy (tests). */
  readonly retry?: Partial<Omit<RetryPolicy, 'maxAttempts'>>;
  /** Requests in flight. Default 32. */
  readonly concurrency?: number;
  /** Sockets per agent. Default `concurrency`. */
  readonly maxSockets?: number;
  /** TCP connect timeout. Default 5 s. */
  readonly connectionTimeoutMs?: number;
  /** Socket idle timeout per request. Default 30 s. */
  readonly requestTimeoutMs?: number;
  /** Known conditional-write support (skips detection). */
  readonly conditionalWrites?: boolean;
  /** put({path}) above this size uses multipart. Default 64 MiB. */
  readonly multipartThreshold?: number;
  /** Part size for multipart puts. Default 16 MiB. */
  readonly partSize?: number;
  readonly logger?: Logger;
  /** Reports every request and attempt (metrics). */
  readonly observer?: S3Observer;
  /**
   * Worker threads that receive the bodies of large ranged reads (`getInto` of at least
   * `readWorkerMinBytes` into a SharedArrayBuffer-backed target), off the event loop
   * (s3-read-worker.ts). Default 1; 0: on the event loop.
   */
  readonly readWorkers?: number;
  /** Smallest getInto handed to a read worker. Default 1 MiB. */
  readonly readWorkerMinBytes?: number;
  /** Transport of ranged GETs: undici (default; less CPU per byte, s3-ranged-get.ts) or node:http as every other request. */
  readonly rangedGetTransport?: 'undici' | 'node-http';
  /**
   * HeadObject and PutObjects of up to `directPutMaxBytes`: signed and sent without the
   * SDK's request pipeline, over undici (default; s3-direct.ts), or through the SDK.
   */
  readonly smallRequestTransport?: 'direct' | 'sdk';
  /** Largest PutObject body sent directly (0: every PUT through the SDK). Default 1 MiB. */
  readonly directPutMaxBytes?: number;
}

const BODY_RESUMES = 3;
/** Extra bytes from a server that returned more than asked that are read and dropped rather than closing the connection. */
const MAX_DISCARD = 64 * 1024;

type Condition = 'ifNoneMatch' | 'ifMatch' | undefined;

export class S3Store implements ObjectStore {
  readonly kind = 's3' as const;
  readonly description: string;
  readonly bucket: string;
  readonly endpoint: string | undefined;
  readonly client: S3Client;
  private caps: StoreCapabilities;
  private readonly queue: PQueue;
  /** The keep-alive agents the client uses (exposed for tests and metrics). */
  readonly agents: { readonly http: HttpAgent; readonly https: HttpsAgent };
  private readonly log: Logger;
  private readonly multipartThreshold: number;
  private readonly partSize: number;
  private bucketChecked = false;
  private conditionalKnown: boolean;
  /** The client's retry strategy and budget. */
  readonly retry: GatewayRetryStrategy;
  private readonly readWorkers: S3ReadWorkers | null;
  private readonly readWorkerMinBytes: number;
  /** The undici connections of ranged GETs and direct HEADs (null: neither is used). */
  private readonly undici: UndiciAgent | null;
  private readonly direct: DirectS3 | null;
  private readonly directPutMax: number;

  constructor(opts: S3StoreOptions) {
    if (!opts.bucket) throw new StoreError('EINVAL', 's3: bucket name required');
    this.bucket = opts.bucket;
    this.endpoint = opts.endpoint;
    this.description = `s3://${opts.bucket}${opts.endpoint ? ` (${opts.endpoint})` : ''}`;
    this.log = (opts.logger ?? silentLogger).child({ store: this.description });
    this.multipartThreshold = opts.multipartThreshold ?? 64 * 1024 * 1024;
    this.partSize = opts.partSize ?? 16 * 1024 * 1024;
    const concurrency = Math.max(1, opts.concurrency ?? 32);
    const maxSockets = Math.max(1, opts.maxSockets ?? concurrency);
    this.queue = new PQueue({ concurrency });
    this.agents = {
      http: new HttpAgent({ keepAlive: true, maxSockets, keepAliveMsecs: 1000 }),
      https: new HttpsAgent({ keepAlive: true, maxSockets, keepAliveMsecs: 1000 }),
    };
    this.retry = new GatewayRetryStrategy({ ...DEFAULT_RETRY_POLICY, ...opts.retry, maxAttempts: Math.max(1, opts.maxAttempts ?? DEFAULT_RETRY_POLICY.maxAttempts) });
    const connectionTimeoutMs = opts.connectionTimeoutMs ?? 5000;
    const requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
    // Direct PUTs only where the SDK would add nothing to the body (no flexible checksums).
    const direct = opts.smallRequestTransport !== 'sdk';
    this.directPutMax = (opts.requestChecksumCalculation ?? 'WHEN_REQUIRED') === 'WHEN_REQUIRED' ? (opts.directPutMaxBytes ?? 1024 * 1024) : -1;
    this.undici = opts.rangedGetTransport !== 'node-http' || direct ? undiciAgent({ connections: maxSockets, connectionTimeoutMs, requestTimeoutMs }) : null;
    const region = opts.region ?? (process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || (opts.endpoint ? 'us-east-1' : undefined));
    const config: S3ClientConfig = {
      ...(region !== undefined ? { region } : {}),
      ...(opts.endpoint !== undefined ? { endpoint: opts.endpoint } : {}),
      forcePathStyle: opts.forcePathStyle ?? opts.endpoint !== undefined,
      ...(opts.credentials ? { credentials: { ...opts.credentials } } : {}),
      requestChecksumCalculation: opts.requestChecksumCalculation ?? 'WHEN_REQUIRED',
      responseChecksumValidation: opts.responseChecksumValidation ?? 'WHEN_REQUIRED',
      maxAttempts: this.retry.policy.maxAttempts,
      retryStrategy: this.retry,
      // The middleware stack resolved once per command type, not on every send (we add no
      // per-command middleware): about a third less client CPU per small request (HEAD).
      cacheMiddleware: true,
      requestHandler: (() => {
        const fallback = new NodeHttpHandler({
          httpAgent: this.agents.http,
          httpsAgent: this.agents.https,
          connectionTimeout: connectionTimeoutMs,
          requestTimeout: requestTimeoutMs,
        });
        if (opts.rangedGetTransport === 'node-http') return fallback;
        return new RangedGetHandler({
          fallback, connections: maxSockets, connectionTimeoutMs, requestTimeoutMs, ...(this.undici ? { agent: this.undici } : {}),
        }) as unknown as NodeHttpHandler;
      })(),
    };
    this.client = new S3Client(config);
    if (opts.observer) observeS3Client(this.client, opts.observer);
    this.direct = direct && this.undici
      ? new DirectS3({ client: this.client, bucket: this.bucket, agent: this.undici, retry: this.retry, ...(opts.observer ? { observer: opts.observer } : {}) })
      : null;
    this.caps = { conditionalWrites: opts.conditionalWrites ?? false, minPartSize: MIN_PART_SIZE, maxPartSize: MAX_PART_SIZE, maxParts: MAX_PARTS };
    this.conditionalKnown = opts.conditionalWrites !== undefined;
    const workers = opts.readWorkers ?? 1;
    this.readWorkerMinBytes = opts.readWorkerMinBytes ?? 1024 * 1024;
    // The workers' stores get the same options but what does not cross threads (their
    // requests are reported to the observer through the pool).
    const { logger: _logger, observer: _observer, ...cloneable } = opts;
    this.readWorkers = workers > 0 ? new S3ReadWorkers({ ...cloneable, conditionalWrites: this.caps.conditionalWrites }, workers, opts.observer) : null;
  }

  get capabilities(): StoreCapabilities {
    return this.caps;
  }

  /**
   * Finds out whether the server honours If-None-Match / If-Match on PUT, by writing and
   * deleting a probe object `${probePrefix}.vhost-s3-probe-<random>`. Until this ran (or
   * `conditionalWrites` was given) conditional writes are refused with ENOTSUP. A store
   * we may not write to reports false.
   */
  async detectCapabilities(probePrefix = ''): Promise<StoreCapabilities> {
    if (this.conditionalKnown) return this.caps;
    const key = `${probePrefix}${PROBE_NAME_PREFIX}${randomBytes(8).toString('hex')}`;
    const put = (extra: { IfNoneMatch?: string; IfMatch?: string }): Promise<unknown> =>
      this.queue.add(() => this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: new Uint8Array(0), ContentLength: 0, ...extra })));
    const refused = (err: unknown): boolean => {
      const s = httpStatus(err);
      return s === 412 || s === 409;
    };
    let supported = false;
    let created = false;
    try {
      await put({ IfNoneMatch: '*' });
      created = true;
      supported = await put({ IfNoneMatch: '*' }).then(() => false, (err: unknown) => {
        if (refused(err)) return true;
        throw err;
      });
      if (supported) {
        supported = await put({ IfMatch: '"00000000000000000000000000000000"' }).then(() => false, (err: unknown) => {
          if (refused(err)) return true;
          throw err;
        });
      }
    } catch (err) {
      const e = this.mapError(err, 'detectCapabilities', key);
      if (e.missingContainer || networkFailure(err) !== undefined) throw e;
      this.log.warn('conditional-write probe failed; treating conditional writes as unsupported', { err: e });
      supported = false;
    } finally {
      if (created) await this.delete(key).catch(() => undefined);
    }
    this.caps = { ...this.caps, conditionalWrites: supported };
    this.conditionalKnown = true;
    this.log.debug('store capabilities', { conditionalWrites: supported });
    return this.caps;
  }

  /** Throws ENOENT (missingContainer) if the bucket does not exist, EACCES if we may not see it. */
  async checkBucket(): Promise<void> {
    try {
      await this.queue.add(() => this.client.send(new HeadBucketCommand({ Bucket: this.bucket })));
      this.bucketChecked = true;
    } catch (err) {
      const status = httpStatus(err);
      if (status === 404 || errName(err) === 'NoSuchBucket' || errName(err) === 'NotFound') throw this.noBucket('checkBucket');
      throw this.mapError(err, 'checkBucket', undefined);
    }
  }

  // ---- reads

  async get(key: string, opts: { readonly range?: ByteRange } = {}): Promise<GetResult> {
    validateKey(key, 'get');
    if (opts.range) validateRange(opts.range.offset, opts.range.length);
    if (opts.range && opts.range.length === 0) return this.emptyRead(key);
    const r = await this.read(key, opts.range?.offset ?? 0, opts.range?.length, undefined);
    return { ...r.head, body: r.buffer.subarray(0, r.bytesRead) };
  }

  async getInto(key: string, offset: number, target: Uint8Array): Promise<ReadIntoResult> {
    validateKey(key, 'get');
    validateRange(offset, target.length);
    if (target.length === 0) {
      const { body: _unused, ...head } = await this.emptyRead(key);
      return { ...head, bytesRead: 0 };
    }
    if (target.length >= this.readWorkerMinBytes) {
      const onWorker = this.readWorkers?.tryGetInto(key, offset, target);
      if (onWorker) return onWorker;
    }
    const r = await this.read(key, offset, target.length, target);
    return { ...r.head, bytesRead: r.bytesRead };
  }

  async head(key: string): Promise<ObjectHead | null> {
    validateKey(key, 'head');
    if (this.direct && (await this.direct.usable())) {
      const reply = await this.call('head', key, () => this.direct!.head(key));
      if (reply === null) {
        await this.checkBucketOnce();
        return null;
      }
      const h = headOfReply(key, reply);
      if (h) return h;
      // A reply the SDK would read differently (an unparsable date): ask through the SDK.
    }
    try {
      const out = await this.queue.add(() => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key })));
      return {
        key,
        size: out.ContentLength ?? 0,
        etag: out.ETag ?? '',
        lastModified: out.LastModified ?? new Date(0),
        metadata: { ...(out.Metadata ?? {}) },
        ...(out.ContentType !== undefined ? { contentType: out.ContentType } : {}),
      };
    } catch (err) {
      if (httpStatus(err) === 404 || errName(err) === 'NotFound' || errName(err) === 'NoSuchKey') {
        await this.checkBucketOnce();
        return null;
      }
      throw this.mapError(err, 'head', key);
    }
  }

  /** After a HEAD's 404: the first one checks that the bucket exists (ENOENT missingContainer if not). */
  private async checkBucketOnce(): Promise<void> {
    if (this.bucketChecked) return;
    try {
      await this.checkBucket();
    } catch (e) {
      // A policy limited to a prefix may forbid HeadBucket: the key is missing, the bucket presumably not.
      if (!(e instanceof StoreError && e.code === 'EACCES')) throw e;
      this.bucketChecked = true;
    }
  }

  async list(opts: ListOptions = {}): Promise<ListPage> {
    const { prefix, delimiter, maxKeys } = validateListOptions(opts);
    const out = await this.call('list', undefined, () =>
      this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          ...(prefix ? { Prefix: prefix } : {}),
          ...(delimiter ? { Delimiter: delimiter } : {}),
          ...(opts.continuationToken !== undefined ? { ContinuationToken: opts.continuationToken } : {}),
          MaxKeys: maxKeys,
        }),
      ),
    );
    const objects = (out.Contents ?? []).map((o) => {
      if (o.Key === undefined) throw new StoreError('EIO', 'list: reply without a key', { op: 'list' });
      return { key: o.Key, size: o.Size ?? 0, etag: o.ETag ?? '', lastModified: o.LastModified ?? new Date(0) };
    });
    const commonPrefixes = (out.CommonPrefixes ?? []).flatMap((p) => (p.Prefix !== undefined ? [p.Prefix] : []));
    const nextToken = out.IsTruncated ? out.NextContinuationToken : undefined;
    if (out.IsTruncated && nextToken === undefined) throw new StoreError('EIO', 'list: truncated reply without a continuation token', { op: 'list' });
    return { objects, commonPrefixes, ...(nextToken !== undefined ? { nextToken } : {}) };
  }

  // ---- writes

  async put(key: string, body: PutBody, opts: PutOptions = {}): Promise<PutResult> {
    validateKey(key, 'put');
    const metadata = normalizeMetadata(opts.metadata);
    requireConditional(this, 'put', key, opts);
    let bytes: Uint8Array;
    if (body instanceof Uint8Array) bytes = body;
    else {
      const size = (await statOrThrow(body.path)).size;
      if (size > this.multipartThreshold) {
        const src = await fileSource(body.path);
        try {
          return await putLarge(this, key, src, { ...opts, metadata, partSize: this.partSize });
        } finally {
          await src.close();
        }
      }
      bytes = await readFile(body.path);
    }
    if (bytes.length > this.caps.maxPartSize) throw new StoreError('EFBIG', `put: ${key}: ${bytes.length} bytes is over the single-put limit; use putLarge`, { op: 'put', key });
    const cond: Condition = opts.ifNoneMatch ? 'ifNoneMatch' : opts.ifMatch !== undefined ? 'ifMatch' : undefined;
    if (bytes.length <= this.directPutMax && this.direct && (await this.direct.usable())) {
      const headers: Record<string, string> = {};
      // The SDK's default for a blob payload.
      headers['content-type'] = opts.contentType ?? 'application/octet-stream';
      if (opts.ifNoneMatch) headers['if-none-match'] = opts.ifNoneMatch;
      if (opts.ifMatch !== undefined) headers['if-match'] = opts.ifMatch;
      for (const [k, v] of Object.entries(metadata)) headers[`x-amz-meta-${k}`] = v;
      const etag = await this.call('put', key, () => this.direct!.put(key, bytes, headers), cond);
      return { etag: etag ?? '' };
    }
    const out = await this.call(
      'put',
      key,
      () =>
        this.client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: key,
            Body: bytes,
            ContentLength: bytes.length,
            Metadata: metadata,
            ...(opts.contentType !== undefined ? { ContentType: opts.contentType } : {}),
            ...(opts.ifNoneMatch ? { IfNoneMatch: opts.ifNoneMatch } : {}),
            ...(opts.ifMatch !== undefined ? { IfMatch: opts.ifMatch } : {}),
          }),
        ),
      cond,
    );
    return { etag: out.ETag ?? '' };
  }

  async delete(key: string): Promise<void> {
    validateKey(key, 'delete');
    await this.call('delete', key, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })));
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    for (const k of keys) validateKey(k, 'deleteMany');
    // Keys that XML parsers commonly mangle (s3rver trims leading/trailing whitespace in the
    // DeleteObjects body) go through single DELETEs, whose key travels in the URL.
    const single = keys.filter(xmlFragileKey);
    const batched = single.length === 0 ? keys : keys.filter((k) => !xmlFragileKey(k));
    const batches: string[][] = [];
    for (let i = 0; i < batched.length; i += DELETE_BATCH) batches.push(batched.slice(i, i + DELETE_BATCH));
    const failed: { key: string; code?: string; message?: string }[] = [];
    await Promise.all([
      ...single.map((k) =>
        this.delete(k).catch((err: unknown) => {
          const e = this.mapError(err, 'deleteMany', k);
          failed.push({ key: k, code: e.storeCode, message: e.message });
        }),
      ),
      ...batches.map(async (batch) => {
        const out = await this.call('deleteMany', undefined, () =>
          this.client.send(new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true } })),
        );
        for (const e of out.Errors ?? []) failed.push({ key: e.Key ?? '?', code: e.Code, message: e.Message });
      }),
    ]);
    if (failed.length > 0) {
      const first = failed[0]!;
      const code = first.code ? codeForS3Error(first.code, undefined) : 'EIO';
      throw new StoreError(code, `deleteMany: ${failed.length} of ${keys.length} keys failed (${first.key}: ${first.code ?? ''} ${first.message ?? ''})`, {
        op: 'deleteMany',
        storeCode: first.code,
        failedKeys: failed.map((f) => f.key),
      });
    }
  }

  async copy(src: string, dst: string, opts: CopyOptions = {}): Promise<PutResult> {
    validateKey(src, 'copy');
    validateKey(dst, 'copy');
    const replace = opts.metadata !== undefined;
    const metadata = replace ? normalizeMetadata(opts.metadata, 'copy') : undefined;
    let contentType = opts.contentType;
    if (replace && contentType === undefined) {
      // REPLACE resets the content type unless sent again: keep the source's.
      const h = await this.head(src);
      if (h === null) throw new StoreError('ENOENT', `copy: no such key: ${src}`, { op: 'copy', key: src, storeCode: 'NoSuchKey' });
      contentType = h.contentType;
    }
    const out = await this.call('copy', src, () =>
      this.client.send(
        new CopyObjectCommand({
          Bucket: this.bucket,
          Key: dst,
          CopySource: copySource(this.bucket, src),
          MetadataDirective: replace ? 'REPLACE' : 'COPY',
          ...(metadata ? { Metadata: metadata } : {}),
          ...(replace && contentType !== undefined ? { ContentType: contentType } : {}),
        }),
      ),
    );
    return { etag: out.CopyObjectResult?.ETag ?? '' };
  }

  // ---- multipart

  async createMultipart(key: string, opts: MultipartOptions = {}): Promise<string> {
    validateKey(key, 'createMultipart');
    const metadata = normalizeMetadata(opts.metadata, 'createMultipart');
    const out = await this.call('createMultipart', key, () =>
      this.client.send(
        new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key, Metadata: metadata, ...(opts.contentType !== undefined ? { ContentType: opts.contentType } : {}) }),
      ),
    );
    if (!out.UploadId) throw new StoreError('EIO', 'createMultipart: reply without an upload id', { op: 'createMultipart', key });
    return out.UploadId;
  }

  async uploadPart(key: string, uploadId: string, partNumber: number, body: Uint8Array): Promise<string> {
    validateKey(key, 'uploadPart');
    validatePartNumber(partNumber);
    if (body.length > this.caps.maxPartSize) throw new StoreError('EFBIG', 'uploadPart: part too large', { op: 'uploadPart', key });
    const out = await this.call('uploadPart', key, () =>
      this.client.send(new UploadPartCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, PartNumber: partNumber, Body: body, ContentLength: body.length })),
    );
    if (!out.ETag) throw new StoreError('EIO', 'uploadPart: reply without an ETag', { op: 'uploadPart', key });
    return out.ETag;
  }

  async uploadPartCopy(key: string, uploadId: string, partNumber: number, source: PartCopySource): Promise<string> {
    validateKey(key, 'uploadPartCopy');
    validateKey(source.key, 'uploadPartCopy');
    validatePartNumber(partNumber);
    const { offset, length } = source;
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 1 || length > this.caps.maxPartSize)
      throw new StoreError('EINVAL', `uploadPartCopy: bad source range ${offset}+${length}`, { op: 'uploadPartCopy', key });
    const out = await this.call('uploadPartCopy', key, () =>
      this.client.send(new UploadPartCopyCommand({
        Bucket: this.bucket, Key: key, UploadId: uploadId, PartNumber: partNumber, CopySource: copySource(this.bucket, source.key),
        CopySourceRange: `bytes=${offset}-${offset + length - 1}`, CopySourceIfMatch: source.ifMatch,
      })), source.ifMatch !== undefined ? 'ifMatch' : undefined);
    const etag = out.CopyPartResult?.ETag;
    if (!etag) throw new StoreError('EIO', 'uploadPartCopy: reply without an ETag', { op: 'uploadPartCopy', key });
    return etag;
  }

  async completeMultipart(key: string, uploadId: string, parts: readonly CompletedPart[], opts: CompleteOptions = {}): Promise<PutResult> {
    validateKey(key, 'completeMultipart');
    validatePartList(parts);
    requireConditional(this, 'completeMultipart', key, opts);
    const cond: Condition = opts.ifNoneMatch ? 'ifNoneMatch' : opts.ifMatch !== undefined ? 'ifMatch' : undefined;
    const out = await this.call(
      'completeMultipart',
      key,
      () =>
        this.client.send(
          new CompleteMultipartUploadCommand({
            Bucket: this.bucket,
            Key: key,
            UploadId: uploadId,
            MultipartUpload: { Parts: parts.map((p) => ({ PartNumber: p.partNumber, ETag: p.etag })) },
            ...(opts.ifNoneMatch ? { IfNoneMatch: opts.ifNoneMatch } : {}),
            ...(opts.ifMatch !== undefined ? { IfMatch: opts.ifMatch } : {}),
          }),
        ),
      cond,
    );
    return { etag: out.ETag ?? '' };
  }

  async abortMultipart(key: string, uploadId: string): Promise<void> {
    validateKey(key, 'abortMultipart');
    await this.call('abortMultipart', key, () => this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId })));
  }

  /** getInto fills large SharedArrayBuffer-backed targets on a read worker (others on the event loop). */
  get sharedReadBuffers(): boolean {
    return this.readWorkers !== null;
  }

  /** Reads served by the read workers so far. */
  get readsOnWorkers(): number {
    return this.readWorkers?.served ?? 0;
  }

  /** Starts the read workers and resolves once they are ready (until then large reads run on the event loop). */
  async startReadWorkers(): Promise<void> {
    await this.readWorkers?.whenReady();
  }

  /** Nothing to do: S3 acknowledges a write once it is durable. */
  async sync(): Promise<void> {}

  async close(): Promise<void> {
    await this.readWorkers?.close();
    this.queue.clear();
    this.client.destroy();
    await this.undici?.destroy().catch(() => undefined);
    this.agents.http.destroy();
    this.agents.https.destroy();
  }

  // ---- internals

  private async call<T>(op: string, key: string | undefined, fn: () => Promise<T>, cond?: Condition): Promise<T> {
    try {
      return await this.queue.add(fn);
    } catch (err) {
      throw this.mapError(err, op, key, cond);
    }
  }

  /** A 0-byte read: the object's head, or ENOENT. */
  private async emptyRead(key: string): Promise<GetResult> {
    const h = await this.head(key);
    if (h === null) throw new StoreError('ENOENT', `get: no such key: ${key}`, { op: 'get', key, storeCode: 'NoSuchKey' });
    return { ...h, body: new Uint8Array(0) };
  }

  /**
   * GET `length` bytes at `offset` (to the end when undefined) into `target` (allocated
   * from the reply's length when undefined). Resumes a body that breaks off, pinned to the
   * first reply's ETag.
   */
  private async read(
    key: string,
    offset: number,
    length: number | undefined,
    target: Uint8Array | undefined,
  ): Promise<{ head: ObjectHead; buffer: Uint8Array; bytesRead: number }> {
    let got = 0;
    let buffer = target;
    let head: ObjectHead | undefined;
    for (let resume = 0; ; resume++) {
      const start = offset + got;
      let range: string | undefined;
      if (length !== undefined) {
        const end = offset + length - 1;
        // s3rver reads `bytes=0-0` as the whole object: ask for 0-1 and use one byte.
        range = `bytes=${start}-${end === 0 ? 1 : end}`;
      } else if (start > 0) range = `bytes=${start}-`;
      const progress = { n: 0 };
      try {
        await this.queue.add(async () => {
          const out = await this.client.send(
            new GetObjectCommand({ Bucket: this.bucket, Key: key, ...(range ? { Range: range } : {}), ...(head ? { IfMatch: head.etag } : {}) }),
          );
          const cr = parseContentRange(out.ContentRange);
          const status = out.$metadata.httpStatusCode;
          const bodyStart = status === 206 && cr ? cr.start : 0;
          const total = status === 206 && cr ? cr.total : out.ContentLength;
          if (total === undefined) throw new StoreError('EIO', `get: ${key}: reply without a length`, { op: 'get', key });
          head ??= headOf(key, out, total);
          const avail = Math.max(0, total - start);
          const want = length === undefined ? avail : Math.min(length - got, avail);
          buffer ??= new Uint8Array(length === undefined ? avail : Math.min(length, avail));
          const body = out.Body;
          if (want === 0 || start < bodyStart) {
            // Nothing to read: drain an empty body (keeps the connection); otherwise close it —
            // s3rver announces a 1-byte body for ranges of empty objects and never sends it.
            if (out.ContentLength === 0 && body instanceof Readable) body.resume();
            else destroyBody(body);
            if (start < bodyStart) throw new StoreError('EIO', `get: ${key}: server returned ${out.ContentRange} for ${range}`, { op: 'get', key });
            return;
          }
          await copyBody(body, start - bodyStart, buffer.subarray(got, got + want), progress);
          if (progress.n < want) throw new StoreError('EIO', `get: ${key}: body ended after ${progress.n} of ${want} bytes`, { op: 'get', key, storeCode: 'ShortBody' });
        });
        got += progress.n;
        return { head: head!, buffer: buffer!, bytesRead: got };
      } catch (err) {
        got += progress.n;
        if (errName(err) === 'InvalidRange' || httpStatus(err) === 416) {
          // At or past the end (S3 answers 416, also for any range of an empty object).
          const h = head ?? (await this.head(key));
          if (h === null) throw new StoreError('ENOENT', `get: no such key: ${key}`, { op: 'get', key, storeCode: 'NoSuchKey' });
          return { head: h, buffer: buffer ?? new Uint8Array(0), bytesRead: got };
        }
        const e = this.mapError(err, 'get', key, head ? 'ifMatch' : undefined);
        // Headers arrived, then the body broke (reset, timeout): the SDK does not retry that.
        const resumable = head !== undefined && resume < BODY_RESUMES && !(err instanceof StoreError) && e.code !== 'ESTALE' && e.code !== 'ENOENT';
        if (!resumable) throw e;
        this.log.debug('resuming a broken GET body', { key, got, err: e });
      }
    }
  }

  private noBucket(op: string, key?: string): StoreError {
    return new StoreError('ENOENT', `bucket ${this.bucket} does not exist${this.endpoint ? ` at ${this.endpoint}` : ''}`, {
      op,
      key,
      storeCode: 'NoSuchBucket',
      httpStatus: 404,
      missingContainer: true,
    });
  }

  mapError(err: unknown, op: string, key: string | undefined, cond?: Condition): StoreError {
    if (err instanceof StoreError) return err;
    const name = errName(err);
    const status = httpStatus(err);
    const msg = err instanceof Error ? err.message : String(err);
    const where = `${op}${key !== undefined ? ` ${key}` : ''} on ${this.description}`;
    const details = { op, key, storeCode: name, httpStatus: status };
    if (name === 'NoSuchBucket') return this.noBucket(op, key);
    const net = networkFailure(err);
    if (net) return new StoreError(net.code, `${where}: ${net.text} (${msg})`, details);
    if (status === 412 || name === 'PreconditionFailed' || (status === 409 && cond !== undefined && name === 'ConditionalRequestConflict')) {
      return cond === 'ifMatch'
        ? new StoreError('ESTALE', `${where}: object changed (If-Match failed)`, details)
        : new StoreError('EEXIST', `${where}: object exists (If-None-Match failed)`, details);
    }
    if (name === 'CredentialsProviderError' || /Could not load credentials/i.test(msg))
      return new StoreError('EACCES', `${where}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile): ${msg}`, details);
    if (/Region is missing/i.test(msg)) return new StoreError('EINVAL', `${where}: no region configured (set AWS_REGION or the region option)`, details);
    const code = codeForS3Error(name, status);
    const text = code === 'ENOENT' ? 'no such key' : msg && msg !== 'UnknownError' ? msg : `HTTP ${status ?? '?'} ${name ?? ''}`;
    return new StoreError(code, `${where}: ${text}`, details);
  }
}

// ---- helpers

function codeForS3Error(name: string | undefined, status: number | undefined): ErrnoName {
  switch (name) {
    case 'NoSuchKey':
    case 'NoSuchUpload':
    case 'NotFound':
    case 'NoSuchBucket':
      return 'ENOENT';
    case 'AccessDenied':
    case 'InvalidAccessKeyId':
    case 'SignatureDoesNotMatch':
    case 'Forbidden':
    case 'AllAccessDisabled':
    case 'InvalidToken':
    case 'ExpiredToken':
      return 'EACCES';
    case 'EntityTooLarge':
      return 'EFBIG';
    case 'EntityTooSmall':
    case 'InvalidPart':
    case 'InvalidPartOrder':
    case 'InvalidArgument':
    case 'InvalidRequest':
    case 'InvalidRange':
    case 'KeyTooLongError':
    case 'MetadataTooLarge':
    case 'MalformedXML':
      return 'EINVAL';
    case 'NotImplemented':
    case 'MethodNotAllowed':
      return 'ENOTSUP';
  }
  if (status === 404) return 'ENOENT';
  if (status === 403) return 'EACCES';
  if (status === 501 || status === 405) return 'ENOTSUP';
  return 'EIO';
}

function errName(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const n = (err as { name?: unknown; Code?: unknown }).Code ?? (err as { name?: unknown }).name;
  return typeof n === 'string' ? n : undefined;
}

function httpStatus(err: unknown): number | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const s = (err as { $metadata?: { httpStatusCode?: unknown } }).$metadata?.httpStatusCode;
  return typeof s === 'number' ? s : undefined;
}

/**
 * The errno and description of a connection-level failure (also inside AggregateError /
 * cause), or undefined. The SDK names resets and broken pipes "TimeoutError" (to retry
 * them): the code says what happened, so it is looked at first.
 */
function networkFailure(err: unknown, depth = 0): { readonly code: ErrnoName; readonly text: string } | undefined {
  if (typeof err !== 'object' || err === null || depth > 5) return undefined;
  const e = err as { code?: unknown; name?: unknown; errors?: unknown; cause?: unknown; $metadata?: { httpStatusCode?: unknown } };
  if (typeof e.$metadata?.httpStatusCode === 'number') return undefined;
  switch (e.code) {
    case 'ECONNREFUSED':
      return { code: 'ECONNREFUSED', text: 'endpoint unreachable' };
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return { code: 'EHOSTUNREACH', text: 'endpoint unreachable' };
    case 'ECONNRESET':
      return { code: 'EIO', text: 'connection reset' };
    case 'EPIPE':
      return { code: 'EIO', text: 'connection closed by the endpoint' };
    case 'ETIMEDOUT':
    case 'ECONNABORTED':
      return { code: 'ETIMEDOUT', text: 'timed out' };
  }
  if (e.name === 'TimeoutError' || e.name === 'RequestTimeout') return { code: 'ETIMEDOUT', text: 'timed out' };
  if (Array.isArray(e.errors)) for (const sub of e.errors) {
    const c = networkFailure(sub, depth + 1);
    if (c) return c;
  }
  return networkFailure(e.cause, depth + 1);
}

function xmlFragileKey(key: string): boolean {
  return /^\s|\s$|[\x00-\x08\x0b\x0c\x0e-\x1f\r]/.test(key);
}

/** `bytes start-end/total` → numbers; null for anything else (including `*` totals). */
export function parseContentRange(v: string | undefined): { start: number; end: number; total: number } | null {
  if (!v) return null;
  const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(v.trim());
  if (!m) return null;
  return { start: Number(m[1]), end: Number(m[2]), total: Number(m[3]) };
}

/** x-amz-copy-source: bucket/key with every segment percent-encoded (AWS decodes it). */
export function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}

function headOf(key: string, out: GetObjectCommandOutput, size: number): ObjectHead {
  return {
    key,
    size,
    etag: out.ETag ?? '',
    lastModified: out.LastModified ?? new Date(0),
    metadata: { ...((out.Metadata ?? {}) as Metadata) },
    ...(out.ContentType !== undefined ? { contentType: out.ContentType } : {}),
  };
}

/**
 * A direct HEAD's reply as the SDK would deserialize it (ContentLength, ETag,
 * LastModified, Metadata from x-amz-meta-*, ContentType); undefined for a reply the SDK
 * would read otherwise (a Last-Modified or Content-Length it would reject).
 */
function headOfReply(key: string, reply: DirectReply): ObjectHead | undefined {
  const h = reply.headers;
  const lm = h['last-modified'];
  const lastModified = lm === undefined ? new Date(0) : new Date(Date.parse(lm));
  if (Number.isNaN(lastModified.getTime())) return undefined;
  const cl = h['content-length'];
  const size = cl === undefined ? 0 : /^\d+$/.test(cl) ? Number(cl) : NaN;
  if (!Number.isSafeInteger(size)) return undefined;
  const metadata: Metadata = {};
  for (const name in h) if (name.startsWith('x-amz-meta-')) metadata[name.slice(11)] = h[name]!;
  const contentType = h['content-type'];
  return { key, size, etag: h.etag ?? '', lastModified, metadata, ...(contentType !== undefined ? { contentType } : {}) };
}

function asReadable(body: unknown): Readable {
  if (body instanceof Readable) return body;
  throw new StoreError('EIO', 'get: unexpected body type from the S3 client');
}

function destroyBody(body: unknown): void {
  if (body instanceof Readable) body.destroy();
}

/**
 * Copies the body into `target` after skipping `skip` bytes, counting in `progress.n`.
 * Up to MAX_DISCARD bytes beyond the target are read and dropped (keeps the connection);
 * more than that closes the stream.
 */
async function copyBody(body: unknown, skip: number, target: Uint8Array, progress: { n: number }): Promise<void> {
  const stream = asReadable(body);
  let toSkip = skip;
  let extra = 0;
  /** Takes one chunk; false once more than MAX_DISCARD bytes beyond the target came. */
  const take = (chunk: Uint8Array): boolean => {
    let c = chunk;
    if (toSkip > 0) {
      // A server that ignored the Range header: skip to our offset.
      const s = Math.min(toSkip, c.length);
      toSkip -= s;
      c = c.subarray(s);
    }
    const n = Math.min(target.length - progress.n, c.length);
    if (n > 0) {
      target.set(n === c.length ? c : c.subarray(0, n), progress.n);
      progress.n += n;
    }
    extra += c.length - n;
    return extra <= MAX_DISCARD;
  };
  // The chunks as they come off the socket, without a stream step per chunk.
  if (stream instanceof SinkableBody) return stream.sinkInto(take);
  for await (const chunk of stream as AsyncIterable<Uint8Array>) {
    if (!take(chunk)) break; // leaving the loop destroys the stream
  }
}

async function statOrThrow(path: string): Promise<{ size: number }> {
  try {
    return await stat(path);
  } catch (err) {
    throw new StoreError('ENOENT', `put: cannot read ${path}: ${err instanceof Error ? err.message : String(err)}`, { op: 'put' });
  }
}

/** A PartSource reading a local file (one handle for the whole upload). */
export async function fileSource(path: string): Promise<PartSource & { close(): Promise<void> }> {
  const fh: FileHandle = await open(path, 'r');
  const size = (await fh.stat()).size;
  return {
    size,
    read: async (offset, target) => {
      let done = 0;
      while (done < target.length) {
        const { bytesRead } = await fh.read(target, done, target.length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done;
    },
    close: () => fh.close(),
  };
}
