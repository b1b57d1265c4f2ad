// The conformance suite against S3Store talking to s3rver (a child process), plus what is
// specific to S3: locators and the credential chain, capability detection, error mapping.
import { expect } from 'chai';
import { S3Store, copySource, parseContentRange, type S3StoreOptions } from '../../src/backends/s3-store.js';
import { createObjectStore } from '../../src/backends/locator.js';
import { startS3rver, withEnv, type S3rver } from '../support/s3rver.js';
import { freePort as closedPort } from '../support/metrics.js';
import { expectErrno, objectStoreConformance } from './conformance.js';

let s3: S3rver | undefined;

function server(): S3rver {
  if (!s3) throw new Error('s3rver not started');
  return s3;
}

function storeOn(bucket: string, extra: Partial<S3StoreOptions> = {}): S3Store {
  return new S3Store({ bucket, endpoint: server().endpoint, credentials: server().credentials, multipartThreshold: 6 * 1024 * 1024, partSize: 5 * 1024 * 1024, ...extra });
}

describe('S3Store against s3rver', () => {
  before(async function () {
    this.timeout(30_000);
    s3 = await startS3rver({ buckets: ['conformance', 'extra'] });
  });
  after(async () => {
    await s3?.stop();
  });

  objectStoreConformance({
    name: 's3 (s3rver)',
    open: async () => {
      const store = storeOn('conformance');
      await store.checkBucket();
      await store.detectCapabilities('');
      return { store, close: () => store.close() };
    },
    openMissingContainer: async () => {
      const store = storeOn('no-such-bucket');
      return { store, close: () => store.close() };
    },
    openUnreachable: async () => {
      const store = new S3Store({ bucket: 'b', endpoint: `http://127.0.0.1:${await closedPort()}`, credentials: server().credentials });
      return { store, close: () => store.close() };
    },
    quirks: {
      maxKeysCountsPrefixes: false,
      pathLikeKeys: false,
      strictMultipart: false,
      copyReservedChars: false,
      exactListOrder: false,
      rejectsBadTokens: false,
      abortMultipart: false,
      partCopy: false,
    },
  });

  describe('S3Store specifics (s3rver)', function () {
    this.timeout(60_000);

    it('detects that s3rver ignores conditional writes, and leaves no probe object behind', async () => {
      const store = storeOn('extra');
      try {
        expect(store.capabilities.conditionalWrites).to.equal(false);
        const caps = await store.detectCapabilities('probe-here/');
        expect(caps.conditionalWrites).to.equal(false);
        const page = await store.list({ prefix: 'probe-here/' });
        expect(page.objects).to.deep.equal([]);
      } finally {
        await store.close();
      }
    });

    it('trusts an operator-declared capability without probing', async () => {
      const store = storeOn('extra', { conditionalWrites: true });
      try {
        expect((await store.detectCapabilities()).conditionalWrites).to.equal(true);
      } finally {
        await store.close();
      }
    });

    it('createObjectStore parses s3://bucket/prefix, takes the endpoint from VHOST_S3_ENDPOINT and credentials from AWS_* variables', async () => {
      const restore = withEnv(server().env);
      try {
        const { store, prefix } = await createObjectStore('s3://extra/images/vm1');
        try {
          expect(prefix).to.equal('images/vm1/');
          expect(store.kind).to.equal('s3');
          expect(store.capabilities.conditionalWrites).to.equal(false);
          await store.put(`${prefix}manifest.json`, new TextEncoder().encode('{}'));
          expect((await store.head(`${prefix}manifest.json`))!.size).to.equal(2);
        } finally {
          await store.close();
        }
      } finally {
        restore();
      }
    });

    it('createObjectStore reports a missing bucket clearly', async () => {
      const e = await expectErrno(createObjectStore('s3://not-a-bucket', { s3: { endpoint: server().endpoint, credentials: server().credentials } }), 'ENOENT');
      expect(e.missingContainer).to.equal(true);
      expect(e.message).to.include('bucket not-a-bucket does not exist');
    });

    it('reuses keep-alive connections from its own agent, within maxSockets', async () => {
      const store = storeOn('extra', { concurrency: 4 });
      try {
        // DELETEs go through the SDK's node:http handler (small PUTs and HEADs do not: s3-direct.ts).
        await Promise.all(Array.from({ length: 40 }, (_, i) => store.delete(`ka/${i}`)));
        const agent = store.agents.http;
        const free = Object.values(agent.freeSockets).reduce((n, l) => n + (l?.length ?? 0), 0);
        expect(free).to.be.within(1, 4);
        expect(agent.maxSockets).to.equal(4);
      } finally {
        await store.close();
      }
    });

    it('maps wrong credentials to EACCES', async () => {
      const store = new S3Store({ bucket: 'extra', endpoint: server().endpoint, credentials: { accessKeyId: 'WRONG', secretAccessKey: 'WRONG' } });
      try {
        await expectErrno(store.get('k'), 'EACCES');
        await expectErrno(store.put('k', new Uint8Array(1)), 'EACCES');
      } finally {
        await store.close();
      }
    });

    it('parses Content-Range and encodes copy sources', () => {
      expect(parseContentRange('bytes 0-4/5')).to.deep.equal({ start: 0, end: 4, total: 5 });
      expect(parseContentRange('bytes */5')).to.equal(null);
      expect(parseContentRange(undefined)).to.equal(null);
      expect(copySource('b', 'a b/ü+?#')).to.equal('b/a%20b/%C3%BC%2B%3F%23');
    });
  });
});
