// SIGHUP: `vhost-s3 run` re-reads its exports file and applies a share's timeouts live,
// on the connection that is up (one FuseClient session throughout):
// - the entry and attribute timeouts the next replies carry;
// - the gateway's own listing cache (an object put behind its back stays unseen while the
//   new list-timeout holds, and shows once it is set back to 0);
// - changes that need a restart (a write buffer size) are logged and not applied; a file that no
//   longer validates is logged and ignored; the session never drops.
import { expect } from 'chai';
import { mkdirSync, writeFileSync } from 'node:fs';

import { createObjectStore } from '../../src/backends/locator.js';
import { FuseClient } from '../../src/frontend/fuse-client.js';
import { O_CREAT, O_WRONLY, S_IFREG } from '../../src/fuse/abi.js';
import { CliProcess, startRunServer } from '../support/cli.js';
import { TmpDir } from '../support/tmp.js';

describe('cli: vhost-s3 run reloads timeouts on SIGHUP without dropping the connection', function () {
  this.timeout(60_000);
  let dir: TmpDir;
  let server: CliProcess | null = null;
  let fc: FuseClient | null = null;

  beforeEach(() => {
    dir = new TmpDir('vhost-s3-reload-');
  });
  afterEach(async function () {
    await fc?.close().catch(() => undefined);
    fc = null;
    if (this.currentTest?.state === 'failed' && server) console.log(server.describe());
    await server?.kill();
    server = null;
    dir.remove();
  });

  it('a changed attr/entry/list timeout takes effect on the live session; other changes wait for a restart', async () => {
    const storeDir = dir.file('store');
    mkdirSync(storeDir);
    const sock = dir.file('fs.sock');
    const file = dir.file('exports.json');
    const write = (fields: Record<string, unknown>): void =>
      writeFileSync(file, JSON.stringify({ exports: [{ type: 'fs', socket: sock, bucket: `file:${storeDir}`, ...fields }] }));
    write({ 'attr-timeout': 1, 'entry-timeout': 1, 'list-timeout': 0 });
    server = await startRunServer(file);
    const srv = server;
    fc = await FuseClient.connect(sock);
    await fc.init();
    const made = await fc.create(1, 'a', O_CREAT | O_WRONLY, S_IFREG | 0o644);
    await fc.release(made.entry.nodeid, made.fh);
    let e = await fc.lookup(1, 'a');
    expect([e.entryValidMs, e.attrValidMs]).to.deep.equal([1000, 1000]);

    let reloads = 0;
    const hup = async (): Promise<void> => {
      reloads++;
      srv.proc.kill('SIGHUP');
      await srv.waitFor(`reload ${reloads}`, (_o, err) => err.split('configuration reload done').length - 1 + err.split('configuration reload failed').length - 1 >= reloads);
    };

    write({ 'attr-timeout': 7, 'entry-timeout': 9, 'list-timeout': 60, 'write-buffer': '16M' });
    await hup();
    e = await fc.lookup(1, 'a');
    expect([e.entryValidMs, e.attrValidMs], 'timeouts after SIGHUP').to.deep.equal([9000, 7000]);
    expect((await fc.getattr(e.nodeid)).attrValidMs).to.equal(7000);
    const logs = srv.logLines();
    const applied = logs.find((l) => l.msg === 'configuration reloaded');
    expect(applied?.changed).to.deep.equal({
      'attr-timeout': { from: 1, to: 7 }, 'entry-timeout': { from: 1, to: 9 }, 'list-timeout': { from: 0, to: 60 },
    });
    expect(logs.find((l) => l.msg === 'configuration changes not applied (need a restart)')?.fields).to.deep.equal(['write-buffer']);

    // The gateway's listing cache now holds listings for 60 s: an object stored behind its back is not listed.
    const names = async (): Promise<string[]> => (await fc!.listdir(1)).map((d) => d.name).filter((n) => n !== '.' && n !== '..').sort();
    expect(await names()).to.deep.equal(['a']);
    const { store } = await createObjectStore(`file:${storeDir}`);
    try {
      await store.put('behind', new TextEncoder().encode('put directly'));
    } finally {
      await store.close();
    }
    // (The file store itself sees changes made behind its back after 1 s: wait that out.)
    await new Promise((r) => setTimeout(r, 1200));
    expect(await names(), 'listing cached for the new list-timeout').to.deep.equal(['a']);

    // Back to 0: the cached listing is stale at once (not at its old expiry).
    write({ 'attr-timeout': 7, 'entry-timeout': 9, 'list-timeout': 0, 'write-buffer': '16M' });
    await hup();
    expect(await names()).to.deep.equal(['a', 'behind']);

    // A file that no longer validates: logged, the configuration in use stays.
    writeFileSync(file, JSON.stringify({ exports: [{ type: 'fs', socket: sock, bucket: `file:${storeDir}`, 'attr-timeout': 'soon' }] }));
    await hup();
    const failed = srv.logLines().find((l) => l.msg === 'configuration reload failed; the configuration in use is kept');
    expect(String(failed?.error)).to.match(/exports\[0\] \(fs\): "attr-timeout": must be a number/);
    e = await fc.lookup(1, 'behind');
    expect([e.entryValidMs, e.attrValidMs]).to.deep.equal([9000, 7000]);

    // One session from start to end.
    expect(srv.running).to.equal(true);
    expect(srv.logLines().filter((l) => l.msg === 'vhost-user frontend connected')).to.have.length(1);
    expect(srv.logLines().some((l) => l.msg === 'vhost-user frontend disconnected')).to.equal(false);
    await fc.close();
    fc = null;
    expect((await srv.stop('SIGTERM')).code, srv.describe()).to.equal(0);
  });
});
