// The deployment files (deploy/) and docs/deployment.md, checked with the tools that
// read them where this machine has them: the systemd units with `systemd-analyze verify`
// (no warning allowed), the libvirt domain with `virt-xml-validate` (libvirt's RelaxNG
// schemas) and xmllint XPath queries for the required elements, the Containerfile's and
// the env examples' variables against the configuration schema (names and values), and
// every socket path they name against each other. The QEMU command line is run by
// test/guest/deployment.test.ts.
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { loadConfig, schemas, type CommandName, type OptionSpec } from '../../src/config.js';
import { CLI_BIN, REPO_ROOT } from '../support/cli.js';
import { codeBlocks, containerfileEnv, documentedCommand, parseEnvFile, repoFile } from '../support/deploy.js';

const FS_SOCKET = '/run/vhost-s3/fs-data.sock';
const BLK_SOCKET = '/run/vhost-s3/blk-vm1.sock';

function envNames(...commands: CommandName[]): Set<string> {
  return new Set(commands.flatMap((c) => (Object.values(schemas[c]) as OptionSpec[]).map((s) => s.env)));
}

function vhostVars(env: Record<string, string>): string[] {
  return Object.keys(env).filter((k) => k.startsWith('VHOST_S3_'));
}

describe('deploy: files and documents', () => {
  describe('systemd units', () => {
    const units = ['vhost-s3-fs@.service', 'vhost-s3-blk@.service', 'vhost-s3-mount@.service'];
    const text = (u: string): string => repoFile(`deploy/systemd/${u}`);
    const directives = (u: string): Map<string, string[]> => {
      const out = new Map<string, string[]>();
      for (const line of text(u).split('\n')) {
        const m = /^([A-Za-z]+)=(.*)$/.exec(line);
        if (m) out.set(m[1]!, [...(out.get(m[1]!) ?? []), m[2]!]);
      }
      return out;
    };

    it('pass systemd-analyze verify without a single warning', () => {
      expect(spawnSync('systemd-analyze', ['--version']).error, 'systemd-analyze missing: apt-get install systemd (.ci/run)').to.equal(undefined);
      const dir = mkdtempSync(join(tmpdir(), 'vhost-s3-units-'));
      try {
        // An instance of each template, with ExecStart pointing at this checkout's launcher
        // (verify checks that the program exists).
        const paths = units.map((u) => {
          const p = join(dir, u.replace('@.', '@test.'));
          writeFileSync(p, text(u).replace(/\/usr\/bin\/vhost-s3\b/g, CLI_BIN));
          return p;
        });
        const r = spawnSync('systemd-analyze', ['verify', ...paths], { encoding: 'utf8' });
        expect(r.status, r.stderr).to.equal(0);
        expect(r.stderr.trim(), 'systemd-analyze warnings').to.equal('');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('one instance per export: EnvironmentFile per instance, the command of the unit', () => {
      expect(directives('vhost-s3-fs@.service').get('EnvironmentFile')).to.deep.equal(['/etc/vhost-s3/fs-%i.env']);
      expect(directives('vhost-s3-fs@.service').get('ExecStart')).to.deep.equal(['/usr/bin/vhost-s3 fs']);
      expect(directives('vhost-s3-blk@.service').get('EnvironmentFile')).to.deep.equal(['/etc/vhost-s3/blk-%i.env']);
      expect(directives('vhost-s3-blk@.service').get('ExecStart')).to.deep.equal(['/usr/bin/vhost-s3 blk']);
      expect(directives('vhost-s3-mount@.service').get('EnvironmentFile')).to.deep.equal(['/etc/vhost-s3/mount-%i.env']);
    });

    it('fs and blk: hardened, with the socket directory writable and sockets allowed', () => {
      for (const u of ['vhost-s3-fs@.service', 'vhost-s3-blk@.service']) {
        const d = directives(u);
        const one = (k: string): string | undefined => d.get(k)?.[0];
        expect(one('ProtectSystem'), u).to.equal('strict');
        expect(one('NoNewPrivileges'), u).to.equal('yes');
        expect(one('RuntimeDirectory'), u).to.equal('vhost-s3');
        expect(one('ReadWritePaths')!.split(/\s+/), u).to.include('/run/vhost-s3');
        expect(one('RestrictAddressFamilies')!.split(/\s+/), u).to.include.members(['AF_UNIX', 'AF_INET', 'AF_INET6']);
        expect(one('UMask'), u).to.equal('0007');
        // V8's JIT writes executable memory.
        expect(d.has('MemoryDenyWriteExecute'), u).to.equal(false);
      }
      expect(directives('vhost-s3-blk@.service').get('ReadWritePaths')![0]!.split(/\s+/)).to.include('/var/lib/vhost-s3');
    });

    it('mount: /dev/fuse allowed, and no option that would hide the mount in a private namespace', () => {
      const d = directives('vhost-s3-mount@.service');
      expect(d.get('DeviceAllow')).to.deep.equal(['/dev/fuse rw']);
      expect(d.get('DevicePolicy')).to.deep.equal(['closed']);
      for (const k of ['ProtectSystem', 'ProtectHome', 'PrivateTmp', 'PrivateDevices', 'ReadWritePaths', 'RestrictNamespaces']) expect(d.has(k), k).to.equal(false);
      expect(d.get('ExecStart')).to.deep.equal(['/usr/bin/vhost-s3 mount ${MOUNTPOINT}']);
    });

    const examples: [string, CommandName, string][] = [
      ['fs-data.env.example', 'fs', FS_SOCKET],
      ['blk-vm1.env.example', 'blk', BLK_SOCKET],
      ['mount-archive.env.example', 'mount', ''],
    ];
    for (const [file, command, socket] of examples) {
      it(`${file}: every VHOST_S3_* variable is an option of ${command}, with a valid value`, () => {
        const env = parseEnvFile(repoFile(`deploy/systemd/${file}`));
        const known = envNames(command);
        for (const k of vhostVars(env)) expect(known.has(k), `${k} is not an option of ${command}`).to.equal(true);
        expect(() => loadConfig(command, [], env)).to.not.throw();
        if (socket) expect(env.VHOST_S3_SOCKET).to.equal(socket);
      });
    }
  });

  describe('libvirt domain (deploy/libvirt/vm1.xml)', () => {
    const xml = join(REPO_ROOT, 'deploy/libvirt/vm1.xml');
    const xpath = (expr: string): string => execFileSync('xmllint', ['--xpath', expr, xml], { encoding: 'utf8' }).trim();

    it('validates against libvirt\'s domain schema (virt-xml-validate)', () => {
      const r = spawnSync('virt-xml-validate', [xml, 'domain'], { encoding: 'utf8' });
      expect(r.error, 'virt-xml-validate missing: apt-get install libvirt-clients libxml2-utils (.ci/run)').to.equal(undefined);
      expect(r.status, r.stdout + r.stderr).to.equal(0);
    });

    it('shares guest memory and attaches both sockets the units create', () => {
      expect(xpath('string(/domain/memoryBacking/source/@type)')).to.equal('memfd');
      expect(xpath('string(/domain/memoryBacking/access/@mode)')).to.equal('shared');
      const fs = '/domain/devices/filesystem[@type="mount"]';
      expect(xpath(`string(${fs}/driver/@type)`)).to.equal('virtiofs');
      expect(xpath(`string(${fs}/driver/@queue)`)).to.equal('1024');
      expect(xpath(`string(${fs}/source/@socket)`)).to.equal(FS_SOCKET);
      expect(xpath(`string(${fs}/target/@dir)`)).to.equal(parseEnvFile(repoFile('deploy/systemd/fs-data.env.example')).VHOST_S3_TAG);
      const disk = '/domain/devices/disk[@type="vhostuser"]';
      expect(xpath(`string(${disk}/source/@type)`)).to.equal('unix');
      expect(xpath(`string(${disk}/source/@path)`)).to.equal(BLK_SOCKET);
      expect(xpath(`string(${disk}/driver/@queues)`)).to.equal(parseEnvFile(repoFile('deploy/systemd/blk-vm1.env.example')).VHOST_S3_QUEUES);
    });

    it('docs/deployment.md shows the same elements', () => {
      const doc = codeBlocks(repoFile('docs/deployment.md')).find((b) => b.lang === 'xml')!.body;
      const file = repoFile('deploy/libvirt/vm1.xml');
      for (const el of doc.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('<'))) expect(file, el).to.include(el);
    });
  });

  describe('Containerfile', () => {
    const text = repoFile('deploy/Containerfile');
    const env = containerfileEnv(text);

    it('declares every option of fs and blk, and nothing that is not an option', () => {
      const known = envNames('fs', 'blk', 'doctor');
      for (const k of vhostVars(env)) expect(known.has(k), `${k} is not an option of fs, blk or doctor`).to.equal(true);
      for (const k of envNames('fs', 'blk')) expect(env, `deploy/Containerfile has no ENV ${k} (add it with its default)`).to.have.property(k);
    });

    it('its values are valid configurations of fs, blk and doctor', () => {
      const fs = loadConfig('fs', [], env);
      expect(fs.socket).to.equal('/run/vhost-s3/vhost-s3.sock');
      expect(fs.checksums).to.equal('when-required');
      expect(loadConfig('blk', [], env).ioEngine).to.equal('uring');
      expect(loadConfig('doctor', [], env).socketDir).to.equal('/run/vhost-s3');
    });

    it('copies files that exist, runs the launcher, and documents the three credential sources', () => {
      for (const m of text.matchAll(/^COPY (?!--from)(.+) (\S+)$/gm)) {
        for (const src of m[1]!.split(/\s+/)) expect(existsSync(join(REPO_ROOT, src)), `COPY ${src}`).to.equal(true);
      }
      expect(text).to.match(/^ENTRYPOINT \["node", "\/opt\/vhost-s3\/bin\/vhost-s3\.js"\]$/m);
      expect(text).to.match(/^VOLUME \/run\/vhost-s3$/m);
      for (const w of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_PROFILE', 'IMDS', 'AWS_EC2_METADATA_DISABLED']) expect(text).to.include(w);
    });
  });

  describe('docs/deployment.md', () => {
    it('cloud-hypervisor attaches the same sockets with shared memory', () => {
      const words = documentedCommand('cloud-hypervisor');
      const opt = (name: string): string[] => words.flatMap((w, i) => (w === name ? [words[i + 1]!] : []));
      expect(opt('--memory')[0]).to.include('shared=on');
      expect(opt('--fs')[0]).to.include(`socket=${FS_SOCKET}`).and.include('tag=data');
      expect(opt('--disk').some((d) => d.includes('vhost_user=true') && d.includes(`socket=${BLK_SOCKET}`) && d.includes('num_queues=2'))).to.equal(true);
    });

    it('names the Kata settings', () => {
      const doc = repoFile('docs/deployment.md');
      for (const w of ['shared_fs = "virtio-fs"', 'virtio_fs_daemon', 'enable_vhost_user_store = true', 'vhost_user_store_path']) expect(doc).to.include(w);
    });
  });
});
