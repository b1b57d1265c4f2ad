// `npm run demo` (`vhost-s3 demo`) as a newcomer runs it: the gateway on the embedded
// store, a real Linux guest under QEMU (TCG), the share and the disk mounted in it, and
// `ls -l` / `df -h` from inside the guest on the console. Run twice on the same data
// directory: the first run formats the empty disk, the second finds the file system the
// first one stored in the object image. And without QEMU: one line, non-zero exit.
import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { createObjectStore } from '../../src/backends/locator.js';
import { DEMO_FILES, GUEST_NOTE } from '../../src/cli/demo.js';
import { assertGuestPrereqs, ensureGuestImage } from '../support/guest/index.js';
import { REPO_ROOT, runCli, type CliResult } from '../support/cli.js';
import { TmpDir } from '../support/tmp.js';

function explain(r: CliResult): string {
  return `exit ${r.code ?? r.signal} after ${Math.round(r.ms)} ms\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
}

/** The guest's console lines, as the demo prints them ("guest | ..."). */
function guestLines(r: CliResult): string[] {
  return r.stdout.split('\n').filter((l) => l.startsWith('guest | ')).map((l) => l.slice('guest | '.length));
}

/** The lines a guest command printed: from its "$ cmd" line to the next blank line. */
function commandOutput(lines: string[], cmd: string): string[] {
  const i = lines.indexOf(`$ ${cmd}`);
  if (i < 0) return [];
  const end = lines.indexOf('', i);
  return lines.slice(i + 1, end < 0 ? undefined : end);
}

describe('cli: vhost-s3 demo (npm run demo)', function () {
  this.timeout(900_000);
  let dir: TmpDir;

  before(async function () {
    this.timeout(600_000);
    assertGuestPrereqs();
    await ensureGuestImage();
    dir = new TmpDir('vhost-s3-demo-test-');
  });
  after(() => dir?.remove());

  it('is what npm run demo runs', () => {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.demo).to.equal('node bin/vhost-s3.js demo');
    expect(pkg.scripts.predemo).to.equal('npm run build');
  });

  it('without QEMU: one line naming what to install, non-zero exit, nothing started', async () => {
    const r = await runCli(['demo', '--data-dir', dir.file('never')], { env: { PATH: '/nonexistent' } });
    expect(r.code, explain(r)).to.equal(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines, explain(r)).to.have.length(1);
    expect(lines[0]).to.match(/^vhost-s3: the demo cannot run: qemu-system-x86_64 is not usable .*install Debian package qemu-system-x86/);
    expect(existsSync(dir.file('never')), 'no data directory created').to.equal(false);
  });

  it('bad options: one line, exit 2, before anything starts', async () => {
    for (const args of [['--timeout', '0'], ['--disk-size', '1M'], ['--no-such-option']]) {
      const r = await runCli(['demo', '--data-dir', dir.file('never'), ...args]);
      expect(r.code, explain(r)).to.equal(2);
      expect(r.stderr.trim().split('\n'), explain(r)).to.have.length(1);
      expect(r.stdout, explain(r)).to.equal('');
    }
    expect(existsSync(dir.file('never'))).to.equal(false);
  });

  it('formats the empty disk, shows the sample files and both file systems, and stops everything', async () => {
    const data = dir.file('data');
    const r = await runCli(['demo', '--data-dir', data], { timeoutMs: 400_000 });
    expect(r.code, explain(r)).to.equal(0);
    const lines = guestLines(r);
    expect(lines, explain(r)).to.include('/dev/vda is empty: formatting it');
    // ls -l of the share: the sample files and directory, and the file the guest wrote.
    const ls = commandOutput(lines, 'ls -l /mnt/share');
    for (const name of ['hello.txt', 'numbers.csv']) {
      const size = Buffer.byteLength(DEMO_FILES[name]!);
      expect(ls.some((l) => new RegExp(`^-rw-r--r-- .* ${size} .* ${name.replace('.', '\\.')}$`).test(l)), `${name} (${size} bytes) in\n${ls.join('\n')}\n${explain(r)}`).to.equal(true);
    }
    expect(ls.some((l) => /^d.* notes$/.test(l)), ls.join('\n')).to.equal(true);
    expect(commandOutput(lines, 'ls -l /mnt/share/notes').some((l) => / readme\.md$/.test(l)), explain(r)).to.equal(true);
    expect(ls.some((l) => / from-the-guest\.txt$/.test(l)), ls.join('\n')).to.equal(true);
    expect(commandOutput(lines, 'ls -l /mnt/disk').some((l) => / lost\+found$/.test(l)), explain(r)).to.equal(true);
    // df -h shows both mounts: the virtio-fs share by its tag and the disk.
    const df = commandOutput(lines, 'df -h /mnt/share /mnt/disk');
    expect(df.some((l) => /^share\s.*\s\/mnt\/share$/.test(l)), `${df.join('\n')}\n${explain(r)}`).to.equal(true);
    expect(df.some((l) => /^\/dev\/vda\s+(6\d(\.\d)?M)\s.*\s\/mnt\/disk$/.test(l)), `${df.join('\n')}\n${explain(r)}`).to.equal(true);
    expect(lines).to.include('unmounted both; powering off');
    // The gateway stopped (sockets removed) and what the guest wrote is in the store.
    expect(existsSync(join(data, 'fs.sock')) || existsSync(join(data, 'disk0.sock')), 'sockets removed').to.equal(false);
    const { store } = await createObjectStore(`file:${join(data, 'store')}`);
    try {
      expect(new TextDecoder().decode((await store.get('share/from-the-guest.txt')).body)).to.equal(GUEST_NOTE);
      expect(await store.head('images/disk0/manifest.json')).to.not.equal(null);
    } finally {
      await store.close();
    }
  });

  it('a second run on the same data directory finds the disk formatted (it lives in the store)', async () => {
    const r = await runCli(['demo', '--data-dir', dir.file('data')], { timeoutMs: 400_000 });
    expect(r.code, explain(r)).to.equal(0);
    const lines = guestLines(r);
    expect(lines, explain(r)).to.include('/dev/vda already holds a file system (formatted by an earlier run)');
    expect(lines.some((l) => l.startsWith('$ mke2fs')), 'not formatted again').to.equal(false);
    expect(commandOutput(lines, 'df -h /mnt/share /mnt/disk').some((l) => /\/mnt\/disk$/.test(l)), explain(r)).to.equal(true);
  });
});
