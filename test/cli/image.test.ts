// `vhost-s3 image create|import|export|info|ls|rm` as a user runs them (the real launcher
// as a child process), on s3:// images in s3rver and on file: images in a local store:
// what they print, what they leave in the store, and one-line errors with exit 2.
import { expect } from 'chai';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';

import { ImageKeys, encodeManifest, newManifest, type ImageManifest } from '../../src/blk/image-format.js';
import { listKeys, type ObjectStore } from '../../src/backends/object-store.js';
import { ROOT_MARKER } from '../../src/backends/store-config.js';
import { explain, runCli, startBlkServer, type CliProcess, type CliResult } from '../support/cli.js';
import { startImageBackend, type ImageBackend } from '../support/image-backend.js';
import { TmpDir, makeRawFile } from '../support/tmp.js';
import { freePort as closedPort } from '../support/metrics.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 64 * KiB;

function expectOk(r: CliResult): CliResult {
  expect(r.code, explain(r)).to.equal(0);
  return r;
}

/** Exit 2, nothing on stdout, and exactly one line on stderr besides JSON log lines; returns it. */
function expectConfigError(r: CliResult, says: RegExp): string {
  expect(r.code, explain(r)).to.equal(2);
  expect(r.stdout, explain(r)).to.equal('');
  const lines = r.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{'));
  expect(lines, `exactly one error line\n${explain(r)}`).to.have.length(1);
  expect(lines[0]).to.match(/^vhost-s3: \S/);
  expect(lines[0]).not.to.match(/\bat .*\.js:\d+/);
  expect(lines[0], explain(r)).to.match(says);
  return lines[0]!;
}

function pattern(seed: number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => ((i * 97 + seed * 31) % 251) + 1);
}

async function chunkIndexes(store: ObjectStore, keys: ImageKeys): Promise<number[]> {
  const out: number[] = [];
  for await (const k of listKeys(store, keys.chunksPrefix)) out.push(keys.chunkIndex(k));
  return out;
}

for (const kind of ['s3', 'file'] as const) {
  describe(`cli: vhost-s3 image … on ${kind === 's3' ? 's3:// (s3rver)' : 'file: (local store)'}`, function () {
    this.timeout(60_000);
    let be: ImageBackend;
    let dir: TmpDir;
    let n = 0;
    const gateways: CliProcess[] = [];

    before(async () => {
      be = await startImageBackend(kind, 'vhost-s3-cli-image-');
    });
    after(async () => {
      await be?.stop();
    });
    beforeEach(() => {
      dir = new TmpDir('vhost-s3-cli-image-tmp-');
    });
    afterEach(async () => {
      for (const g of gateways.splice(0)) await g.kill();
      dir.remove();
    });

    const image = (): { name: string; locator: string; keys: ImageKeys } => {
      const name = `vm${++n}`;
      return { name, locator: `${be.folder}/${name}`, keys: new ImageKeys(`images/${name}/`) };
    };
    const cli = (args: string[], env: Record<string, string> = {}): Promise<CliResult> =>
      runCli(args, { env: { ...be.env, ...env }, timeoutMs: 30_000 });

    it('create takes sizes as 20G, 512M or bytes, and refuses an existing image', async () => {
      for (const [size, bytes, human] of [['20G', 20 * 2 ** 30, '20G'], ['512M', 512 * MiB, '512M'], ['1048576', MiB, '1M']] as const) {
        const img = image();
        const r = expectOk(await cli(['image', 'create', img.locator, '--size', size, '--chunk-size', '64K']));
        expect(r.stdout).to.equal(`created ${img.locator}: ${human} (${bytes} bytes), chunk size 64K\n`);
        const m = JSON.parse(new TextDecoder().decode((await be.store.get(img.keys.manifest)).body)) as ImageManifest;
        expect(m).to.include({ size: bytes, chunkSize: CS, version: 1 });
      }
      const img = image();
      expectOk(await cli(['image', 'create', img.locator, '--size', '16M']));
      const uuid = (JSON.parse(new TextDecoder().decode((await be.store.get(img.keys.manifest)).body)) as ImageManifest).uuid;
      expectConfigError(await cli(['image', 'create', img.locator, '--size', '32M']), /already exists/);
      const m = JSON.parse(new TextDecoder().decode((await be.store.get(img.keys.manifest)).body)) as ImageManifest;
      expect(m.uuid, 'the existing image is untouched').to.equal(uuid);
      expect(m.chunkSize, 'default chunk size').to.equal(4 * MiB);
    });

    it('create refuses bad sizes with one line: 12X, not a multiple of 512, missing, bad chunk size', async () => {
      const img = image();
      expectConfigError(await cli(['image', 'create', img.locator, '--size', '12X']), /invalid size "12X"/);
      expectConfigError(await cli(['image', 'create', img.locator, '--size', '1000']), /multiple of 512/);
      expectConfigError(await cli(['image', 'create', img.locator]), /--size/);
      expectConfigError(await cli(['image', 'create', img.locator, '--size', '1G', '--chunk-size', '100K']), /power of two/);
      expect(await be.store.head(img.keys.manifest), 'nothing created').to.equal(null);
    });

    it('info reports size, chunk size, chunks and bytes stored and the lease holder (text and --json)', async () => {
      const img = image();
      expectOk(await cli(['image', 'create', img.locator, '--size', '16M', '--chunk-size', '64K']));
      await be.store.put(img.keys.chunk(0), pattern(1, CS));
      await be.store.put(img.keys.chunk(9), pattern(2, CS));
      let r = expectOk(await cli(['image', 'info', img.locator]));
      expect(r.stdout).to.match(/^image:\s+\S+vm\d+$/m);
      expect(r.stdout).to.match(/^size:\s+16M \(16777216 bytes\)$/m);
      expect(r.stdout).to.match(/^chunk size:\s+64K$/m);
      expect(r.stdout).to.match(/^chunks stored:\s+2 of 256$/m);
      expect(r.stdout).to.match(/^bytes stored:\s+131072$/m);
      expect(r.stdout).to.match(/^lease:\s+none/m);

      const g = await startBlkServer({ socket: dir.file('w.sock'), image: img.locator, env: be.env });
      gateways.push(g);
      r = expectOk(await cli(['image', 'info', img.locator]));
      expect(r.stdout).to.match(new RegExp(`^lease:\\s+${hostname()} pid ${g.pid} \\(holder [0-9a-f-]+, renewed \\d+ s ago\\)$`, 'm'));
      r = expectOk(await cli(['image', 'info', img.locator, '--json']));
      const info = JSON.parse(r.stdout) as { manifest: ImageManifest; chunksStored: number; bytesStored: number; lease: { pid: number; host: string; stale: boolean } };
      expect(info.manifest).to.include({ size: 16 * MiB, chunkSize: CS, version: 1 });
      expect(info.chunksStored).to.equal(2);
      expect(info.bytesStored).to.equal(2 * CS);
      expect(info.lease).to.include({ pid: g.pid, host: hostname(), stale: false });
    });

    it('ls lists the images under a prefix', async () => {
      const folder = `${be.folder}/ls${++n}`;
      for (const [name, size] of [['alpha', '16M'], ['beta', '1G']] as const) {
        expectOk(await cli(['image', 'create', `${folder}/${name}`, '--size', size]));
      }
      expectOk(await cli(['image', 'create', `${folder}/sub/gamma`, '--size', '16M'])); // one level down: not listed
      for (const prefix of [`${folder}/`, folder]) {
        const r = expectOk(await cli(['image', 'ls', prefix]));
        const rows = r.stdout.trim().split('\n').map((l) => l.split('\t'));
        expect(rows.map((x) => x[0])).to.deep.equal(['alpha', 'beta']);
        expect(rows.map((x) => x[1])).to.deep.equal(['16M', '1G']);
        for (const row of rows) expect(Date.parse(row[2]!)).to.be.greaterThan(0);
      }
      expect(expectOk(await cli(['image', 'ls', `${folder}/sub/`])).stdout).to.match(/^gamma\t16M\t/);
      expect(expectOk(await cli(['image', 'ls', `${folder}/empty/`])).stdout).to.equal('');
    });

    it('import then export of a sparse raw file is byte-identical, uploads no all-zero chunk and writes a sparse file', async () => {
      const size = 16 * MiB;
      const raw = makeRawFile(dir.file('disk.raw'), size);
      const fh = await open(raw, 'r+');
      const data: [number, Uint8Array][] = [
        [0, pattern(1, 8 * KiB)], // chunk 0
        [5 * CS - 1024, pattern(2, 2048)], // chunks 4 and 5
        [100 * CS + 512, pattern(3, 512)], // chunk 100
        [size - 512, pattern(4, 512)], // chunk 255
      ];
      for (const [off, b] of data) await fh.write(b, 0, b.length, off);
      await fh.write(new Uint8Array(8 * CS), 0, 8 * CS, 200 * CS); // allocated zeros: not uploaded either
      await fh.close();
      const img = image();
      let r = expectOk(await cli(['image', 'import', raw, img.locator, '--chunk-size', '64K']));
      expect(r.stdout).to.match(/imported .*: 16M, 5 of 256 chunks stored/);
      expect(await chunkIndexes(be.store, img.keys)).to.deep.equal([0, 4, 5, 100, 255]);

      const out = dir.file('export.raw');
      r = expectOk(await cli(['image', 'export', img.locator, out]));
      expect(r.stdout).to.match(/exported .* 5 chunks written/);
      const got = readFileSync(out);
      expect(got.length).to.equal(size);
      expect(got.equals(readFileSync(raw)), 'export is byte-identical to the imported file').to.equal(true);
      const st = statSync(out);
      expect(st.blocks * 512, `export allocates at most the 5 stored chunks (${st.blocks} blocks)`).to.be.at.most(5 * CS);

      // Import refuses an existing image; a missing source file is named.
      expectConfigError(await cli(['image', 'import', raw, img.locator]), /already exists/);
      expectConfigError(await cli(['image', 'import', dir.file('missing.raw'), image().locator]), /cannot read .*missing\.raw/);
    });

    it('rm removes every chunk and the manifest, and refuses while a writer holds a fresh lease', async () => {
      const img = image();
      expectOk(await cli(['image', 'create', img.locator, '--size', '16M', '--chunk-size', '64K']));
      for (const i of [0, 3, 17, 255]) await be.store.put(img.keys.chunk(i), pattern(i, CS));
      const g = await startBlkServer({ socket: dir.file('w.sock'), image: img.locator, env: be.env });
      gateways.push(g);
      expectConfigError(await cli(['image', 'rm', img.locator]), new RegExp(`in use by ${hostname()} pid ${g.pid}`));
      expect(await chunkIndexes(be.store, img.keys), 'nothing removed').to.have.length(4);
      expect((await g.stop()).code, g.describe()).to.equal(0);
      const r = expectOk(await cli(['image', 'rm', img.locator]));
      expect(r.stdout).to.equal(`removed ${img.locator} (4 chunks)\n`);
      const left: string[] = [];
      for await (const k of listKeys(be.store, img.keys.prefix)) left.push(k);
      expect(left, 'no key of the image is left').to.deep.equal([]);
      expectConfigError(await cli(['image', 'rm', img.locator]), /no image at/);
    });

    it('an unknown manifest version is a clear one-line error (info, export, blk)', async () => {
      const img = image();
      await be.store.put(img.keys.manifest, encodeManifest({ ...newManifest(16 * MiB, CS), version: 7 } as unknown as ImageManifest));
      const says = /image format version 7 is not supported \(this vhost-s3 reads version 1\)/;
      expectConfigError(await cli(['image', 'info', img.locator]), says);
      expectConfigError(await cli(['image', 'export', img.locator, dir.file('x.raw')]), says);
      expectConfigError(await cli(['blk', '--socket', dir.file('b.sock'), '--image', img.locator]), says);
      expect(existsSync(dir.file('b.sock'))).to.equal(false);
    });

    it('a missing image is a one-line error for info, export, rm and blk', async () => {
      const img = image();
      for (const args of [
        ['image', 'info', img.locator],
        ['image', 'export', img.locator, dir.file('x.raw')],
        ['image', 'rm', img.locator],
        ['blk', '--socket', dir.file('b.sock'), '--image', img.locator],
      ]) {
        expectConfigError(await cli(args), new RegExp(`no image at .*images/${img.name}/`));
      }
      expect(existsSync(dir.file('x.raw')), 'export leaves no file behind').to.equal(false);
    });

    if (kind === 's3') {
      it('a missing bucket is a one-line error naming it', async () => {
        for (const args of [
          ['image', 'create', 's3://no-such-bucket/images/vm1', '--size', '1G'],
          ['image', 'info', 's3://no-such-bucket/images/vm1'],
          ['image', 'ls', 's3://no-such-bucket/images/'],
          ['blk', '--socket', dir.file('b.sock'), '--image', 's3://no-such-bucket/images/vm1'],
        ]) {
          expectConfigError(await cli(args), /bucket no-such-bucket does not exist/);
        }
      });

      it('wrong credentials (an unknown access key id) are a one-line error that says so', async () => {
        const img = image();
        expectOk(await cli(['image', 'create', img.locator, '--size', '16M']));
        for (const args of [
          ['image', 'create', image().locator, '--size', '1G'],
          ['image', 'info', img.locator],
          ['blk', '--socket', dir.file('b.sock'), '--image', img.locator],
        ]) {
          expectConfigError(await cli(args, { AWS_ACCESS_KEY_ID: 'NOT-A-KEY' }), /access denied.*credentials/i);
        }
      });

      it('an unreachable endpoint (closed port) is a one-line error, quickly', async () => {
        const port = await closedPort();
        for (const args of [
          ['image', 'info', 's3://bkt/images/vm1'],
          ['blk', '--socket', dir.file('b.sock'), '--image', 's3://bkt/images/vm1'],
        ]) {
          const r = await cli(args, { VHOST_S3_ENDPOINT: `http://127.0.0.1:${port}` });
          expectConfigError(r, new RegExp(`unreachable.*127\\.0\\.0\\.1:${port}`));
          expect(r.ms, 'gives up within seconds').to.be.below(20_000);
        }
      });
    } else {
      it('a store folder that does not exist is a one-line error; create makes the store where none is', async () => {
        const missing = `file:${dir.file('nowhere')}/images/vm1`;
        expectConfigError(await cli(['image', 'info', missing]), /store directory .*nowhere.* does not exist/);
        // Without a marker up the path, the image's parent folder becomes a store.
        const loc = `file:${dir.file('fresh')}/images/vm1`;
        expectOk(await cli(['image', 'create', loc, '--size', '16M']));
        expect(existsSync(join(dir.file('fresh'), 'images', ROOT_MARKER))).to.equal(true);
        expectOk(await cli(['image', 'create', `file:${dir.file('fresh')}/images/vm2`, '--size', '16M']));
        const r = expectOk(await cli(['image', 'ls', `file:${dir.file('fresh')}/images/`]));
        expect(r.stdout.split('\n').filter(Boolean).map((l) => l.split('\t')[0])).to.deep.equal(['vm1', 'vm2']);
      });
    }
  });
}
