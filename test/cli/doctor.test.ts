// `vhost-s3 doctor` as a user runs it (a child process through bin/vhost-s3.js): against a
// real s3rver (everything ok, the probe key gone afterwards), and each failure it must
// name with a fix: an endpoint nobody listens on, an unknown access key (s3rver checks
// the key id), a missing bucket, no credentials at all, a server whose clock is an hour
// off (a real HTTP server sending that Date), file: stores present and missing, and
// socket directories that are missing, not a directory, not writable, or too deep.
import { expect } from 'chai';
import { chmodSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';

import { checkDevFuse, clockCheck, MAX_CLOCK_SKEW_S } from '../../src/cli/doctor.js';
import { schemas } from '../../src/config.js';
import { createObjectStore } from '../../src/backends/locator.js';
import { explain, runCli, type CliResult } from '../support/cli.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { TmpDir } from '../support/tmp.js';
import { freePort as closedPort } from '../support/metrics.js';

const BUCKET = 'bkt';
const isRoot = process.getuid?.() === 0;

/** The doctor's lines as { check name → "ok" | "FAIL" | "skip" } and the whole line. */
function checks(r: CliResult): Map<string, { status: string; line: string }> {
  const out = new Map<string, { status: string; line: string }>();
  for (const line of r.stdout.split('\n')) {
    const m = /^(ok|FAIL|skip)\s+([^:]+): /.exec(line);
    if (m) out.set(m[2]!, { status: m[1]!, line });
  }
  return out;
}

function expectCheck(r: CliResult, name: string, status: 'ok' | 'FAIL' | 'skip', says?: RegExp): void {
  const c = checks(r).get(name);
  expect(c, `no "${name}" line\n${explain(r)}`).to.not.equal(undefined);
  expect(c!.status, explain(r)).to.equal(status);
  if (status === 'FAIL') expect(c!.line, 'a failure names its fix').to.match(/ -- fix: \S/);
  if (says) expect(c!.line).to.match(says);
}

describe('cli: vhost-s3 doctor', function () {
  this.timeout(60_000);
  let s3: S3rver;
  let dir: TmpDir;

  before(async () => {
    s3 = await startS3rver({ buckets: [BUCKET] });
  });
  after(async () => {
    await s3?.stop();
  });
  beforeEach(() => {
    dir = new TmpDir('vhost-s3-doctor-');
  });
  afterEach(() => dir.remove());

  it('--help lists its options with their environment variables', async () => {
    const r = await runCli(['doctor', '--help']);
    expect(r.code, explain(r)).to.equal(0);
    for (const spec of Object.values(schemas.doctor)) expect(r.stdout).to.include(`--${spec.arg}`).and.include(spec.env);
    const top = await runCli(['--help']);
    expect(top.stdout).to.match(/^ {2}doctor /m);
  });

  it('passes every check on a reachable s3rver bucket and leaves no probe behind', async () => {
    const sockets = join(dir.path, 'run');
    mkdirSync(sockets);
    const r = await runCli(['doctor', '--bucket', `s3://${BUCKET}/vms/`, '--socket-dir', sockets], { env: { ...s3.env } });
    expect(r.code, explain(r)).to.equal(0);
    for (const name of ['endpoint', 'clock', 'credentials', 'list', 'put', 'get', 'delete', 'batch delete', 'socket directory']) expectCheck(r, name, 'ok');
    expectCheck(r, 'credentials', 'ok', /S3…/);
    expectCheck(r, 'get', 'ok', /whole and ranged/);
    expect(r.stdout).to.not.match(/^FAIL/m);
    // The probe key went under the prefix and is gone; the socket probe is gone too.
    expect(readdirSync(join(s3.directory, BUCKET)).filter((n) => !n.startsWith('.'))).to.deep.equal([]);
    expect(readdirSync(sockets)).to.deep.equal([]);
  });

  it('the same settings from the environment only (VHOST_S3_BUCKET, VHOST_S3_SOCKET_DIR)', async () => {
    const r = await runCli(['doctor'], { env: { ...s3.env, VHOST_S3_BUCKET: `s3://${BUCKET}`, VHOST_S3_SOCKET_DIR: dir.path } });
    expect(r.code, explain(r)).to.equal(0);
    expectCheck(r, 'put', 'ok');
    expectCheck(r, 'socket directory', 'ok', new RegExp(dir.path));
  });

  it('an endpoint nobody listens on: FAIL, and the S3 checks that need it are skipped', async () => {
    const port = await closedPort();
    const r = await runCli(['doctor', '--bucket', `s3://${BUCKET}`], { env: { ...s3.env, VHOST_S3_ENDPOINT: `http://127.0.0.1:${port}` } });
    expect(r.code, explain(r)).to.equal(1);
    expectCheck(r, 'endpoint', 'FAIL', /ECONNREFUSED.*fix: check --endpoint/);
    expectCheck(r, 'credentials', 'skip');
    expectCheck(r, 'bucket access', 'skip');
  });

  it('an access key the server does not know: the listing fails and the fix names the credentials', async () => {
    const r = await runCli(['doctor', '--bucket', `s3://${BUCKET}`], { env: { ...s3.env, AWS_ACCESS_KEY_ID: 'NOSUCHKEY1234' } });
    expect(r.code, explain(r)).to.equal(1);
    expectCheck(r, 'endpoint', 'ok');
    expectCheck(r, 'credentials', 'ok', /NOSU…1234/);
    expectCheck(r, 'list', 'FAIL', /Access Key Id.*fix: check the credentials/);
    expectCheck(r, 'put/get/delete', 'skip');
  });

  it('a bucket that does not exist', async () => {
    const r = await runCli(['doctor', '--bucket', 's3://no-such-bucket'], { env: { ...s3.env } });
    expect(r.code, explain(r)).to.equal(1);
    expectCheck(r, 'list', 'FAIL', /no-such-bucket does not exist.*fix: create the bucket/);
  });

  it('no credentials anywhere (no AWS_* variables, no shared file, IMDS disabled)', async () => {
    const home = join(dir.path, 'home');
    mkdirSync(home);
    const env: Record<string, string> = { VHOST_S3_ENDPOINT: s3.endpoint, AWS_REGION: 'us-east-1', HOME: home, AWS_EC2_METADATA_DISABLED: 'true' };
    const r = await runCli(['doctor', '--bucket', `s3://${BUCKET}`], { env: { ...env, AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '', AWS_PROFILE: '' } });
    expect(r.code, explain(r)).to.equal(1);
    expectCheck(r, 'credentials', 'FAIL', /fix: set AWS_ACCESS_KEY_ID/);
    expectCheck(r, 'bucket access', 'skip');
  });

  describe('clock skew, from the Date header of a server an hour ahead', () => {
    let srv: Server;
    let url: string;
    before(async () => {
      srv = createServer((_req, res) => {
        res.sendDate = false;
        res.writeHead(403, { Date: new Date(Date.now() + 3600_000).toUTCString(), 'Content-Length': '0' });
        res.end();
      });
      await new Promise<void>((res) => srv.listen(0, '127.0.0.1', res));
      url = `http://127.0.0.1:${(srv.address() as { port: number }).port}`;
    });
    after(() => new Promise<void>((res) => srv.close(() => res())));

    it('reports how far off this clock is and fails', async () => {
      const r = await runCli(['doctor', '--bucket', `s3://${BUCKET}`, '--endpoint', url], { env: { ...s3.env } });
      expect(r.code, explain(r)).to.equal(1);
      expectCheck(r, 'endpoint', 'ok', /HTTP 403/);
      expectCheck(r, 'clock', 'FAIL', /(3599|3600|3601) s behind the server.*synchronise/);
    });

    it('the threshold', () => {
      const now = new Date();
      expect(clockCheck(new Date(now.getTime() - MAX_CLOCK_SKEW_S * 1000), now).status).to.equal('ok');
      expect(clockCheck(new Date(now.getTime() - (MAX_CLOCK_SKEW_S + 1) * 1000), now).status).to.equal('FAIL');
      expect(clockCheck(new Date(now.getTime() + (MAX_CLOCK_SKEW_S + 1) * 1000), now).detail).to.match(/behind/);
    });
  });

  it('a file: store: list/put/get/delete there; the S3-only checks are skipped', async () => {
    const store = join(dir.path, 'store');
    mkdirSync(store);
    const seeded = await createObjectStore(`file:${store}`);
    await seeded.store.put('existing.txt', new TextEncoder().encode('hello\n'));
    await seeded.store.close();
    const r = await runCli(['doctor', '--bucket', `file:${store}`]);
    expect(r.code, explain(r)).to.equal(0);
    for (const name of ['endpoint', 'clock', 'credentials']) expectCheck(r, name, 'skip');
    expectCheck(r, 'list', 'ok', /1 object/);
    for (const name of ['put', 'get', 'delete', 'batch delete']) expectCheck(r, name, 'ok');
    const after = await createObjectStore(`file:${store}`);
    try {
      expect((await after.store.list({})).objects.map((o) => o.key)).to.deep.equal(['existing.txt']);
    } finally {
      await after.store.close();
    }
  });

  it('a file: store that does not exist', async () => {
    const r = await runCli(['doctor', '--bucket', `file:${dir.path}/missing`]);
    expect(r.code, explain(r)).to.equal(1);
    expectCheck(r, 'store', 'FAIL', /does not exist.*fix: create the directory/);
  });

  describe('socket directory', () => {
    it('missing', async () => {
      const r = await runCli(['doctor', '--socket-dir', join(dir.path, 'nope')]);
      expect(r.code, explain(r)).to.equal(1);
      expectCheck(r, 'socket directory', 'FAIL', /ENOENT.*fix: create it: mkdir -p/);
    });

    it('a file, not a directory', async () => {
      writeFileSync(join(dir.path, 'f'), '');
      const r = await runCli(['doctor', '--socket-dir', join(dir.path, 'f')]);
      expect(r.code, explain(r)).to.equal(1);
      expectCheck(r, 'socket directory', 'FAIL', /is not a directory/);
    });

    it('so deep that socket paths would not fit in sun_path', async () => {
      const deep = join(dir.path, 'd'.repeat(60), 'e'.repeat(60));
      mkdirSync(deep, { recursive: true });
      const r = await runCli(['doctor', '--socket-dir', deep]);
      expect(r.code, explain(r)).to.equal(1);
      expectCheck(r, 'socket directory', 'FAIL', /longer than 107 bytes.*shorter directory/);
    });

    it('not writable by the user running the doctor', async function () {
      if (!isRoot) this.skip(); // needs another user; as root, permissions would not apply
      const locked = join(dir.path, 'locked');
      mkdirSync(locked);
      chmodSync(dir.path, 0o755);
      chmodSync(locked, 0o755);
      const r = await runCli(['doctor', '--socket-dir', locked], { uid: 65534, gid: 65534 });
      expect(r.code, explain(r)).to.equal(1);
      expectCheck(r, 'socket directory', 'FAIL', /not writable by uid 65534.*ReadWritePaths/);
    });
  });

  it('/dev/fuse: a missing device and a file that is not one', () => {
    expect(checkDevFuse(join(dir.path, 'fuse'))).to.include({ status: 'FAIL', detail: 'missing' });
    writeFileSync(join(dir.path, 'plain'), '');
    expect(checkDevFuse(join(dir.path, 'plain')).detail).to.equal('exists but is not a character device');
    if (isRoot) expect(checkDevFuse().status).to.equal('ok');
  });
});
