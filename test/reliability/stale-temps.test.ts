// A writer of a `file:` store killed mid-write leaves its temporary file (up to a part's
// size); a gateway that opens the store for writing removes it in the background once it
// is older than --stale-temp-age, and leaves alone the temporary file of a live writer.
import { expect } from 'chai';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, statSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { FileStore, HEADER_SIZE } from '../../src/backends/file-store.js';
import { TEMP_TAG } from '../../src/backends/file-keys.js';
import { CliProcess } from '../support/cli.js';
import { TmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;

/** Runs a put of `key` in a child process whose body comes from a FIFO, and SIGKILLs it once 1 MiB reached its temporary file; returns that file. */
async function killWriterMidPut(root: string, key: string, d: TmpDir): Promise<string> {
  const fifo = d.file('body.fifo');
  execFileSync('mkfifo', [fifo]);
  const moduleUrl = new URL('../../src/backends/file-store.js', import.meta.url).href;
  const script = `import(${JSON.stringify(moduleUrl)}).then(async (m) => {
    const s = new m.FileStore(${JSON.stringify(root)});
    process.stdout.write('ready\\n');
    await s.put(${JSON.stringify(key)}, { path: ${JSON.stringify(fifo)} });
  });`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let w = -1;
  try {
    await new Promise<void>((res) => child.stdout!.once('data', () => res()));
    w = openSync(fifo, 'w');
    writeSync(w, Buffer.alloc(MiB, 0x42));
    const temp = (): string | undefined => readdirSync(root).find((n) => n.startsWith(TEMP_TAG));
    await waitFor(() => { const t = temp(); return t !== undefined && statSync(join(root, t)).size >= HEADER_SIZE + MiB; }, 10_000, 'the partial body in the temporary file', 20);
    child.kill('SIGKILL');
    await new Promise((res) => child.once('exit', res));
    return join(root, temp()!);
  } finally {
    if (w >= 0) closeSync(w);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

describe('reliability: temporary files of killed writers in a file: store', function () {
  this.timeout(60_000);
  let d: TmpDir;
  const procs: CliProcess[] = [];
  beforeEach(() => {
    d = new TmpDir('vhost-s3-stale-');
  });
  afterEach(async function () {
    for (const p of procs.splice(0)) {
      if (this.currentTest?.state === 'failed') console.log(p.describe());
      await p.kill();
    }
    d.remove();
  });

  it('fs: a restarted gateway removes the temporary file of a writer killed mid-put once older than --stale-temp-age, not a live writer\'s', async () => {
    const root = d.file('store');
    const store = await FileStore.open(root, { create: true });
    await store.put('victim', new TextEncoder().encode('old'));
    const dead = await killWriterMidPut(root, 'victim', d);
    // The kill happened a minute ago; another writer is writing its temporary file right now.
    const aMinuteAgo = new Date(Date.now() - 60_000);
    utimesSync(dead, aMinuteAgo, aMinuteAgo);
    const live = join(root, `${TEMP_TAG}live-writer`);
    writeFileSync(live, Buffer.alloc(4096, 1));

    const start = (age: number, i: number): CliProcess => {
      const p = new CliProcess(['fs', '--socket', d.file(`fs${i}.sock`), '--bucket', `file:${root}/`, '--stale-temp-age', String(age), '--log-level', 'info']);
      procs.push(p);
      return p;
    };
    // The default age (an hour) keeps a minute-old temporary file.
    const p0 = start(3600, 0);
    await p0.waitFor('the QEMU arguments', (out) => out.includes('guest: mount'));
    expect((await p0.stop('SIGTERM')).code, p0.describe()).to.equal(0);
    expect(existsSync(dead), 'a temporary file younger than --stale-temp-age is kept').to.equal(true);
    expect(p0.stderr).to.not.include('removed temporary files');

    const p1 = start(30, 1);
    await p1.waitFor('the sweep log line', (_out, err) => err.includes('removed temporary files left by killed writers'));
    const line = p1.logLines().find((l) => l.msg === 'removed temporary files left by killed writers');
    expect(line, p1.describe()).to.include({ removed: 1, olderThanS: 30 });
    expect(existsSync(dead), 'the killed writer\'s temporary file').to.equal(false);
    expect(existsSync(live), 'the live writer\'s temporary file').to.equal(true);
    expect(new TextDecoder().decode((await store.get('victim')).body)).to.equal('old');
    expect((await p1.stop('SIGTERM')).code, p1.describe()).to.equal(0);
  });

  it('a --readonly share does not touch the store', async () => {
    const root = d.file('store');
    await FileStore.open(root, { create: true });
    const old = join(root, `${TEMP_TAG}dead`);
    writeFileSync(old, 'x');
    const aDayAgo = new Date(Date.now() - 86_400_000);
    utimesSync(old, aDayAgo, aDayAgo);
    const p = new CliProcess(['fs', '--socket', d.file('ro.sock'), '--bucket', `file:${root}/`, '--readonly', '--stale-temp-age', '0']);
    procs.push(p);
    await p.waitFor('the QEMU arguments', (out) => out.includes('guest: mount'));
    expect((await p.stop('SIGTERM')).code, p.describe()).to.equal(0);
    expect(existsSync(old)).to.equal(true);
  });
});
