// The command line as a user sees it: help texts, `config`, and what happens on bad
// configuration (exit 2, exactly one line on stderr, no stack trace, nothing left behind).
// Every case runs the real launcher (bin/vhost-s3.js) as a child process.
import { expect } from 'chai';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { schemas, type CommandName, type OptionSpec } from '../../src/config.js';
import { REPO_ROOT, explain, runCli } from '../support/cli.js';
import { TmpDir, makeRawFile } from '../support/tmp.js';

const MiB = 1 << 20;
const isRoot = process.getuid?.() === 0;

/** Every non-directory under `root`, relative, sorted. */
function filesUnder(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const e of readdirSync(join(root, rel), { withFileTypes: true })) {
      const p = rel === '' ? e.name : `${rel}/${e.name}`;
      if (e.isDirectory()) walk(p);
      else out.push(p);
    }
  };
  walk('');
  return out.sort();
}

/** Every option of a command appears in its help with its flag and its environment variable. */
function expectOptionsListed(text: string, command: CommandName): void {
  for (const spec of Object.values(schemas[command]) as OptionSpec[]) {
    expect(text, `--${spec.arg} in the help of ${command}`).to.match(new RegExp(`--${spec.arg}\\b`));
    expect(text, `${spec.env} in the help of ${command}`).to.include(spec.env);
  }
}

describe('cli: help and config', function () {
  this.timeout(30_000);

  it('vhost-s3 --help lists every command and mentions the environment variables', async () => {
    for (const args of [['--help'], ['-h'], []]) {
      const r = await runCli(args);
      expect(r.code, explain(r)).to.equal(0);
      expect(r.stderr).to.equal('');
      expect(r.stdout).to.match(/^usage: vhost-s3 <command>/);
      for (const cmd of ['serve', 'blk', 'bench blk', 'config']) expect(r.stdout).to.match(new RegExp(`^  ${cmd}\\s+\\S`, 'm'));
      expect(r.stdout).to.include('VHOST_S3_');
    }
  });

  it('vhost-s3 --help keeps every command name apart from its summary, in one column', async () => {
    const r = await runCli(['--help']);
    expect(r.code, explain(r)).to.equal(0);
    const rows = r.stdout.split('\n').filter((l) => /^  [a-z]/.test(l));
    // The longest names ("image create", "image export") once ran into their summaries.
    for (const name of ['image create', 'image import', 'image export', 'bench blk', 'config']) {
      expect(rows.some((l) => l.startsWith(`  ${name}  `)), `${name} is followed by two spaces\n${r.stdout}`).to.equal(true);
    }
    const column = new Set(rows.map((l) => /^  \S+(?: \S+)*?\s{2,}/.exec(l)![0].length));
    expect([...column], r.stdout).to.have.length(1);
  });

  it('vhost-s3 --version prints the package version', async () => {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    const r = await runCli(['--version']);
    expect(r.code, explain(r)).to.equal(0);
    expect(r.stdout).to.equal(`${pkg.version}\n`);
  });

  const commandHelp: [string[], CommandName, string[]][] = [
    [['blk', '--help'], 'blk', ['--socket', 'VHOST_S3_SOCKET', '--image', 'VHOST_S3_IMAGE', '--readonly', 'VHOST_S3_READONLY', '--queues', 'VHOST_S3_QUEUES', '--serial', 'VHOST_S3_SERIAL', '--io-engine', 'VHOST_S3_IO_ENGINE', '--log-level', 'VHOST_S3_LOG_LEVEL']],
    [['serve', '--help'], 'serve', ['--data-dir', 'VHOST_S3_DATA_DIR', '--disk-size', 'VHOST_S3_DISK_SIZE', '--queues', '--log-level']],
    [['bench', 'blk', '--help'], 'bench blk', ['--socket', '--rw', '--bs', '--iodepth', '--queues', '--runtime', '--size', '--verify', '--json', 'VHOST_S3_BENCH_SOCKET']],
    [['blk', '-h'], 'blk', ['--socket']],
    [['blk', '--socket', '/x.sock', '--help'], 'blk', ['--image']],
  ];
  for (const [args, command, words] of commandHelp) {
    it(`vhost-s3 ${args.join(' ')} lists the options with their flags and environment variables`, async () => {
      const r = await runCli(args);
      expect(r.code, explain(r)).to.equal(0);
      expect(r.stderr).to.equal('');
      expect(r.stdout).to.match(new RegExp(`^usage: vhost-s3 ${command}\\b`));
      for (const w of words) expect(r.stdout, w).to.include(w);
      expectOptionsListed(r.stdout, command);
      // Defaults are shown where there is one.
      if (command === 'blk') expect(r.stdout).to.match(/--queues.*\[default: 1\]/);
    });
  }

  it('vhost-s3 config prints every option of every command', async () => {
    const r = await runCli(['config']);
    expect(r.code, explain(r)).to.equal(0);
    expect(r.stderr).to.equal('');
    for (const command of Object.keys(schemas) as CommandName[]) {
      expect(r.stdout).to.include(`${command}:\n`);
      expectOptionsListed(r.stdout, command);
    }
  });
});

interface BadCase {
  name: string;
  args: (d: TmpDir) => string[];
  env?: (d: TmpDir) => Record<string, string>;
  /** Run as nobody (when we are root) so that permissions apply. */
  unprivileged?: boolean;
  cwd?: (d: TmpDir) => string;
  /** The one line must match this (it should say what is wrong). */
  says: RegExp;
}

describe('cli: bad configuration exits 2 with one line on stderr', function () {
  this.timeout(30_000);
  let dir: TmpDir;

  beforeEach(() => {
    dir = new TmpDir();
    // Readable by an unprivileged user for the permission cases.
    chmodSync(dir.path, 0o755);
    makeRawFile(dir.file('disk.raw'), 16 * MiB);
    chmodSync(dir.file('disk.raw'), 0o666);
    mkdirSync(dir.file('ro'), { mode: 0o555 });
    chmodSync(dir.file('ro'), 0o555);
    writeFileSync(dir.file('tiny.raw'), 'x');
    writeFileSync(dir.file('plain-file'), 'not a directory');
  });
  afterEach(() => {
    chmodSync(dir.file('ro'), 0o755);
    dir.remove();
  });

  const img = (d: TmpDir): string => `file:${d.file('disk.raw')}`;
  const sock = (d: TmpDir): string => d.file('blk.sock');
  const cases: BadCase[] = [
    { name: 'unknown command', args: () => ['frobnicate'], says: /unknown command "frobnicate"/ },
    { name: 'unknown flag', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--bogus'], says: /unknown option --bogus/ },
    { name: 'unknown flag of another command', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--disk-size', '1G'], says: /--disk-size/ },
    { name: 'stray argument', args: (d) => ['blk', '--socket', sock(d), 'extra'], says: /unexpected argument "extra"/ },
    { name: 'flag without its value', args: (d) => ['blk', '--image', img(d), '--socket'], says: /--socket needs a value/ },
    { name: 'missing --socket', args: (d) => ['blk', '--image', img(d)], says: /no socket given/ },
    { name: 'missing --image', args: (d) => ['blk', '--socket', sock(d)], says: /no image given/ },
    { name: 'image file does not exist', args: (d) => ['blk', '--socket', sock(d), '--image', `file:${d.file('missing.raw')}`], says: /missing\.raw.*(ENOENT|no image)/ },
    { name: 'image is a directory without an image', args: (d) => ['blk', '--socket', sock(d), '--image', `file:${d.path}`], says: /EISDIR|not a regular file|no image/ },
    { name: 'image smaller than a sector', args: (d) => ['blk', '--socket', sock(d), '--image', `file:${d.file('tiny.raw')}`], says: /smaller than one sector/ },
    {
      name: 'image s3:// on an endpoint nobody listens on',
      args: (d) => ['blk', '--socket', sock(d), '--image', 's3://bucket/images/vm1', '--endpoint', 'http://127.0.0.1:9', '--region', 'us-east-1'],
      env: () => ({ AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test' }),
      says: /s3:\/\/bucket.*(unreachable|ECONNREFUSED)/,
    },
    { name: 'image locator of an unknown scheme', args: (d) => ['blk', '--socket', sock(d), '--image', 'http://example.com/x.raw'], says: /unsupported image locator/ },
    // The message names the option (flag and environment variable) that is wrong.
    { name: 'invalid --queues 0', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--queues', '0'], says: /--queues \(VHOST_S3_QUEUES\): must be an integer from 1 to 1024/ },
    { name: 'invalid --queues abc', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--queues', 'abc'], says: /--queues .*must be an integer/ },
    { name: 'invalid --queues 1.5', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--queues', '1.5'], says: /--queues .*must be an integer/ },
    { name: 'invalid --queues 1025 (virtio-blk num_queues is 16 bits; QEMU allows 1024)', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--queues', '1025'], says: /--queues .*from 1 to 1024/ },
    { name: 'invalid VHOST_S3_QUEUES', args: (d) => ['blk', '--socket', sock(d), '--image', img(d)], env: () => ({ VHOST_S3_QUEUES: 'zero' }), says: /VHOST_S3_QUEUES.*must be an integer/ },
    { name: 'invalid serve --queues', args: (d) => ['serve', '--data-dir', d.file('data'), '--queues', '100000'], says: /--queues .*from 1 to 1024/ },
    { name: 'invalid bench --iodepth', args: (d) => ['bench', 'blk', '--socket', sock(d), '--iodepth', '0'], says: /--iodepth \(VHOST_S3_BENCH_IODEPTH\): must be a positive integer/ },
    { name: 'invalid --poll-us (more than a second)', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--poll-us', '2000000'], says: /--poll-us \(VHOST_S3_POLL_US\): must be a whole number of microseconds from 0 to 1000000/ },
    { name: 'invalid VHOST_S3_POLL_US', args: (d) => ['fs', '--socket', d.file('fs.sock'), '--bucket', `file:${d.path}`], env: () => ({ VHOST_S3_POLL_US: '2.5' }), says: /--poll-us .*whole number of microseconds/ },
    { name: 'invalid --io-engine', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--io-engine', 'aio'], says: /--io-engine .*"aio"/ },
    { name: 'invalid --log-level', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--log-level', 'loud'], says: /--log-level .*"loud"/ },
    { name: 'boolean flag with a value', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--readonly=maybe'], says: /--readonly takes true or false/ },
    { name: 'serial longer than 20 bytes', args: (d) => ['blk', '--socket', sock(d), '--image', img(d), '--serial', 'A-SERIAL-OF-25-CHARACTERS'], says: /--serial is 25 bytes long/ },
    { name: 'bad size', args: (d) => ['serve', '--data-dir', d.file('data'), '--disk-size', '12Q'], says: /invalid size "12Q"/ },
    { name: 'bad size in the environment', args: () => ['serve'], env: (d) => ({ VHOST_S3_DATA_DIR: d.file('data'), VHOST_S3_DISK_SIZE: 'lots' }), says: /invalid size "lots"/ },
    { name: 'disk size not a multiple of 512', args: (d) => ['serve', '--data-dir', d.file('data'), '--disk-size', '1000'], says: /multiple of 512/ },
    { name: 'bench block size not a multiple of 512', args: (d) => ['bench', 'blk', '--socket', sock(d), '--bs', '1000'], says: /--bs must be a positive multiple of 512/ },
    { name: 'bench without a socket', args: () => ['bench', 'blk', '--runtime', '1'], says: /no socket given/ },
    { name: 'bench against a socket nobody listens on', args: (d) => ['bench', 'blk', '--socket', sock(d), '--runtime', '1'], says: /cannot drive .*blk\.sock.*ENOENT/ },
    { name: 'socket directory does not exist', args: (d) => ['blk', '--socket', d.file('no/such/dir/blk.sock'), '--image', img(d)], says: /no\/such\/dir\/blk\.sock.*ENOENT/ },
    { name: 'socket directory does not exist (VHOST_S3_SOCKET)', args: (d) => ['blk', '--image', img(d)], env: (d) => ({ VHOST_S3_SOCKET: d.file('nodir/blk.sock') }), says: /nodir\/blk\.sock.*ENOENT/ },
    { name: 'socket directory is a file', args: (d) => ['blk', '--socket', d.file('plain-file/blk.sock'), '--image', img(d)], says: /plain-file\/blk\.sock.*ENOTDIR/ },
    { name: 'socket path is an existing regular file', args: (d) => ['blk', '--socket', d.file('plain-file'), '--image', img(d)], says: /plain-file.*not a socket/ },
    { name: 'socket path too long for a Unix socket', args: (d) => ['blk', '--socket', d.file('s'.repeat(120) + '.sock'), '--image', img(d)], says: /ENAMETOOLONG|too long/ },
    { name: 'socket directory not writable', args: (d) => ['blk', '--socket', d.file('ro/blk.sock'), '--image', img(d)], unprivileged: true, says: /ro\/blk\.sock.*EACCES/ },
    { name: 'serve: data directory cannot be created', args: (d) => ['serve', '--data-dir', d.file('plain-file/data')], says: /cannot create data directory/ },
    { name: 'serve: data directory not writable', args: (d) => ['serve', '--data-dir', d.file('ro'), '--disk-size', '16M'], unprivileged: true, says: /ro.*EACCES/ },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const asNobody = c.unprivileged && isRoot ? { uid: 65534, gid: 65534 } : {};
      const before = filesUnder(dir.path);
      const r = await runCli(c.args(dir), { env: c.env?.(dir), cwd: c.cwd?.(dir), ...asNobody, timeoutMs: 20_000 });
      expect(r.code, explain(r)).to.equal(2);
      expect(r.stdout, 'nothing on stdout').to.equal('');
      const lines = r.stderr.split('\n');
      expect(lines.length, `exactly one line on stderr:\n${r.stderr}`).to.equal(2); // the line and its newline
      expect(lines[1]).to.equal('');
      expect(lines[0]).to.match(/^vhost-s3: \S/);
      expect(lines[0]).not.to.match(/\bat .*\.js:\d+/); // no stack frame
      expect(lines[0]).to.match(c.says);
      // Nothing left behind: no socket, no disk (empty directories do no harm).
      expect(filesUnder(dir.path)).to.deep.equal(before);
    });
  }

  it('--debug adds the stack trace (and only then)', async () => {
    const r = await runCli(['blk', '--socket', dir.file('blk.sock'), '--image', `file:${dir.file('missing.raw')}`, '--debug']);
    expect(r.code, explain(r)).to.equal(2);
    expect(r.stderr.split('\n')[0]).to.match(/^vhost-s3: .*missing\.raw/);
    expect(r.stderr).to.match(/\n\s+at .*\.js:\d+/);
    expect(existsSync(dir.file('blk.sock'))).to.equal(false);
  });
});
