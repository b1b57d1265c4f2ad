// `vhost-s3 doctor`: checks what the gateway needs from this machine and its store, one
// line per check (ok / FAIL with a fix / skip), and exits 1 if any check failed. The
// bucket is exercised through the same ObjectStore the devices use, with a probe key that
// is written, read back (whole and ranged) and deleted.
import { randomBytes } from 'node:crypto';
import { accessSync, closeSync, constants as fsc, openSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { loadConfig, type ConfigOf } from '../config.js';
import { createLogger, type Logger } from '../util/log.js';
import { parseLocator } from '../backends/locator.js';
import { openStore, s3Options } from '../backends/store-config.js';
import { S3Store } from '../backends/s3-store.js';
import { StoreError, type ObjectStore } from '../backends/object-store.js';

type DoctorConfig = ConfigOf<'doctor'>;

export type CheckStatus = 'ok' | 'FAIL' | 'skip';

export interface CheckResult {
  readonly status: CheckStatus;
  readonly name: string;
  readonly detail: string;
  /** What to do about a failure. */
  readonly fix?: string;
}

/** S3 refuses signatures more than 15 minutes off; warn well before that. */
export const MAX_CLOCK_SKEW_S = 300;
/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;
const PROBE_BYTES = 4096;

const ok = (name: string, detail: string): CheckResult => ({ status: 'ok', name, detail });
const fail = (name: string, detail: string, fix: string): CheckResult => ({ status: 'FAIL', name, detail, fix });
const skip = (name: string, detail: string): CheckResult => ({ status: 'skip', name, detail });

export function formatCheck(r: CheckResult): string {
  const line = `${r.status.padEnd(4)}  ${r.name}: ${r.detail}`;
  return r.fix ? `${line} -- fix: ${r.fix}` : line;
}

export async function runDoctor(argv: string[]): Promise<void> {
  const cfg = loadConfig('doctor', argv);
  const log = createLogger(cfg.logLevel);
  let failed = false;
  const report = (r: CheckResult): void => {
    if (r.status === 'FAIL') failed = true;
    process.stdout.write(formatCheck(r) + '\n');
  };
  if (cfg.bucket === '') report(skip('store', 'no --bucket given (VHOST_S3_BUCKET)'));
  else if (cfg.bucket.startsWith('file:')) await checkFileStore(cfg, log, report);
  else await checkS3(cfg, log, report);
  report(checkDevFuse());
  report(cfg.socketDir === '' ? skip('socket directory', 'no --socket-dir given (VHOST_S3_SOCKET_DIR)') : await checkSocketDir(cfg.socketDir));
  if (failed) process.exitCode = 1;
}

// ---- S3

async function checkS3(cfg: DoctorConfig, log: Logger, report: (r: CheckResult) => void): Promise<void> {
  let loc;
  try {
    loc = parseLocator(cfg.bucket);
  } catch (err) {
    report(fail('bucket', (err as Error).message, 'give --bucket s3://bucket[/prefix] or file:/path'));
    return;
  }
  if (loc.kind !== 's3') {
    report(fail('bucket', `${cfg.bucket} is not an s3:// or file: locator`, 'give --bucket s3://bucket[/prefix] or file:/path'));
    return;
  }
  const region = cfg.region || process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1';
  const url = cfg.endpoint !== '' ? cfg.endpoint : `https://s3.${region}.amazonaws.com`;
  const reach = await reachEndpoint(url);
  report(reach.result);
  if (reach.serverDate === undefined) report(skip('clock', reach.reached ? 'the server sent no Date header' : 'endpoint not reached'));
  else report(clockCheck(reach.serverDate, reach.localDate));
  if (!reach.reached) {
    report(skip('credentials', 'endpoint not reached'));
    report(skip('bucket access', 'endpoint not reached'));
    return;
  }
  const store = new S3Store({ ...s3Options(cfg, log), bucket: loc.bucket, maxAttempts: 2 });
  try {
    const creds = await credentialsCheck(store);
    report(creds);
    if (creds.status !== 'ok') {
      report(skip('bucket access', 'no credentials'));
      return;
    }
    for (const r of await probeStore(store, loc.prefix, `s3://${loc.bucket}/${loc.prefix}`)) report(r);
  } finally {
    await store.close();
  }
}

interface Reach {
  readonly result: CheckResult;
  readonly reached: boolean;
  readonly serverDate?: Date;
  readonly localDate: Date;
}

/** Any HTTP answer means the endpoint is reachable (an anonymous request is usually refused). */
async function reachEndpoint(url: string): Promise<Reach> {
  const name = 'endpoint';
  const t0 = Date.now();
  try {
    const res = await fetch(url, { method: 'HEAD', signal: AbortSignal.timeout(5000), redirect: 'manual' });
    const t1 = Date.now();
    const date = res.headers.get('date');
    const serverDate = date !== null && !Number.isNaN(Date.parse(date)) ? new Date(date) : undefined;
    return {
      result: ok(name, `${url} answered HTTP ${res.status} in ${t1 - t0} ms`),
      reached: true,
      localDate: new Date((t0 + t1) / 2),
      ...(serverDate ? { serverDate } : {}),
    };
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const why = (err as Error).name === 'TimeoutError' ? 'no answer within 5 s' : cause?.code ?? cause?.message ?? (err as Error).message;
    return {
      result: fail(name, `cannot reach ${url} (${why})`, 'check --endpoint (VHOST_S3_ENDPOINT), DNS, the firewall and HTTPS_PROXY; is the server running?'),
      reached: false,
      localDate: new Date(t0),
    };
  }
}

/** The server's Date header against this machine's clock (1 s resolution). */
export function clockCheck(serverDate: Date, localDate: Date): CheckResult {
  const skew = Math.round((localDate.getTime() - serverDate.getTime()) / 1000);
  // The Date header has a resolution of 1 s and the request took a while: 2 s is noise.
  const detail = Math.abs(skew) <= 2 ? 'in step with the server (within 2 s)' : `${Math.abs(skew)} s ${skew > 0 ? 'ahead of' : 'behind'} the server`;
  if (Math.abs(skew) > MAX_CLOCK_SKEW_S) {
    return fail('clock', detail, 'synchronise the clock (chrony, systemd-timesyncd); S3 refuses requests signed more than 15 minutes off');
  }
  return ok('clock', detail);
}

async function credentialsCheck(store: S3Store): Promise<CheckResult> {
  const name = 'credentials';
  const fix = 'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a shared credentials file, or run where instance metadata (IMDS) provides a role';
  try {
    const provider = store.client.config.credentials;
    const c = await provider();
    if (!c.accessKeyId) return fail(name, 'the credential chain returned no access key', fix);
    return ok(name, `access key ${maskKey(c.accessKeyId)}${c.sessionToken ? ' with a session token' : ''}`);
  } catch (err) {
    return fail(name, `none found (${(err as Error).message.split('\n')[0]})`, fix);
  }
}

function maskKey(id: string): string {
  return id.length <= 8 ? `${id.slice(0, 2)}…` : `${id.slice(0, 4)}…${id.slice(-4)}`;
}

// ---- any store: list, put, get (whole and ranged), delete of a probe key

async function probeStore(store: ObjectStore, prefix: string, where: string): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  const step = async (name: string, what: () => Promise<string>): Promise<boolean> => {
    try {
      out.push(ok(name, await what()));
      return true;
    } catch (err) {
      out.push(fail(name, (err as Error).message.split('\n')[0]!, storeFix(err)));
      return false;
    }
  };
  const key = `${prefix}.vhost-s3-doctor-${randomBytes(8).toString('hex')}`;
  const data = randomBytes(PROBE_BYTES);
  const listed = await step('list', async () => {
    const page = await store.list({ prefix, delimiter: '/', maxKeys: 10 });
    return `${where}: ${page.objects.length} object(s) and ${page.commonPrefixes.length} prefix(es) on the first page`;
  });
  if (!listed) return [...out, skip('put/get/delete', 'listing failed')];
  const put = await step('put', async () => {
    await store.put(key, data);
    return `wrote ${PROBE_BYTES} bytes to ${key}`;
  });
  if (!put) {
    return [...out, skip('get/delete', 'put failed')];
  }
  try {
    await step('get', async () => {
      const whole = await store.get(key);
      if (!Buffer.from(whole.body).equals(data)) throw new StoreError('EIO', `read back ${whole.body.length} bytes that differ from what was written`);
      const range = await store.get(key, { range: { offset: 1000, length: 100 } });
      if (!Buffer.from(range.body).equals(data.subarray(1000, 1100))) throw new StoreError('EIO', 'a ranged GET (bytes=1000-1099) returned the wrong bytes');
      return 'read the probe back, whole and ranged';
    });
  } finally {
    await step('delete', async () => {
      await store.delete(key);
      if ((await store.head(key)) !== null) throw new StoreError('EIO', `${key} still exists after DELETE`);
      return 'removed the probe';
    });
  }
  // Directory renames and `image rm` delete in batches (DeleteObjects), which some
  // servers refuse (they insist on Content-MD5 where the SDK sends a CRC32).
  const batchKey = `${key}-batch`;
  if (await step('batch delete', async () => {
    await store.put(batchKey, data.subarray(0, 16));
    await store.deleteMany([batchKey]);
    if ((await store.head(batchKey)) !== null) throw new StoreError('EIO', `${batchKey} still exists after DeleteObjects`);
    return 'removed a second probe with a multi-object delete';
  })) return out;
  await store.delete(batchKey).catch(() => undefined);
  return out;
}

function storeFix(err: unknown): string {
  if (!(err instanceof StoreError)) return 'see the message; run with --log-level debug for details';
  if (err.missingContainer) return 'create the bucket or store, or correct --bucket';
  switch (err.code) {
    case 'EACCES':
    case 'EPERM':
      return 'check the credentials (InvalidAccessKeyId, SignatureDoesNotMatch) and the bucket policy: the gateway needs s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject';
    case 'ECONNREFUSED':
    case 'EHOSTUNREACH':
    case 'ETIMEDOUT':
      return 'check --endpoint (VHOST_S3_ENDPOINT) and the network';
    case 'EINVAL':
      return 'check --region (VHOST_S3_REGION) and --path-style (VHOST_S3_PATH_STYLE)';
    default:
      return 'see docs/s3-compatibility.md for the settings of your server';
  }
}

// ---- file: stores

async function checkFileStore(cfg: DoctorConfig, log: Logger, report: (r: CheckResult) => void): Promise<void> {
  for (const name of ['endpoint', 'clock', 'credentials']) report(skip(name, 'not used by a file: store'));
  let store: ObjectStore;
  let prefix: string;
  try {
    ({ store, prefix } = await openStore(cfg.bucket.endsWith('/') ? cfg.bucket : `${cfg.bucket}/`, cfg, log, false));
  } catch (err) {
    report(fail('store', (err as Error).message.split('\n')[0]!, `create the directory (mkdir -p ${resolve(cfg.bucket.slice('file:'.length))}) or correct --bucket`));
    return;
  }
  try {
    for (const r of await probeStore(store, prefix, cfg.bucket)) report(r);
  } finally {
    await store.close();
  }
}

// ---- this machine

export function checkDevFuse(path = '/dev/fuse'): CheckResult {
  const name = path;
  const fix = 'load the module (modprobe fuse); in a container pass the device (--device /dev/fuse); only vhost-s3 mount needs it';
  try {
    if (!statSync(path).isCharacterDevice()) return fail(name, 'exists but is not a character device', fix);
    closeSync(openSync(path, fsc.O_RDWR));
    return ok(name, 'a character device, opened read-write');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    return fail(name, code === 'ENOENT' ? 'missing' : `cannot open (${code})`, code === 'EACCES' || code === 'EPERM' ? 'run as root, or allow the device (DeviceAllow=/dev/fuse rw in systemd, --device /dev/fuse in a container)' : fix);
  }
}

/** The socket directory exists, is writable, and a unix socket can be bound in it. */
export async function checkSocketDir(dir: string): Promise<CheckResult> {
  const name = 'socket directory';
  const abs = resolve(dir);
  try {
    if (!statSync(abs).isDirectory()) return fail(name, `${abs} is not a directory`, `give a directory with --socket-dir, e.g. /run/vhost-s3`);
  } catch (err) {
    return fail(name, `${abs}: ${(err as NodeJS.ErrnoException).code}`, `create it: mkdir -p ${abs} (systemd: RuntimeDirectory=vhost-s3)`);
  }
  try {
    accessSync(abs, fsc.W_OK | fsc.X_OK);
  } catch (err) {
    return fail(name, `${abs} is not writable by uid ${process.getuid?.()} (${(err as NodeJS.ErrnoException).code})`, `chown the directory to the service user, or add it to ReadWritePaths= (systemd)`);
  }
  const probe = join(abs, `.vhost-s3-doctor-${process.pid}-${randomBytes(4).toString('hex')}.sock`);
  if (Buffer.byteLength(probe) > MAX_SOCKET_PATH) {
    return fail(name, `socket paths in ${abs} would be longer than ${MAX_SOCKET_PATH} bytes`, 'use a shorter directory, e.g. /run/vhost-s3');
  }
  try {
    await new Promise<void>((res, rej) => {
      const srv = createServer();
      srv.once('error', rej);
      srv.listen(probe, () => srv.close(() => res()));
    });
    return ok(name, `${abs}: writable, a unix socket can be bound`);
  } catch (err) {
    return fail(name, `cannot bind a unix socket in ${abs} (${(err as NodeJS.ErrnoException).code})`, 'the file system must allow sockets (not a read-only or FUSE mount); check ReadWritePaths= and the mount options');
  } finally {
    rmSync(probe, { force: true });
  }
}
