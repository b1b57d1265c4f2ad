// The BucketVfs behavioural suite over the S3 store talking to s3rver (a child process).
import { S3Store } from '../../src/backends/s3-store.js';
import { startS3rver, type S3rver } from '../support/s3rver.js';
import { bucketVfsSuite } from './suite.js';

let s3: S3rver | undefined;

bucketVfsSuite({
  name: 'the S3 store (s3rver)',
  open: async () => {
    s3 = await startS3rver({ buckets: ['posix'] });
    const store = new S3Store({ bucket: 'posix', endpoint: s3.endpoint, credentials: s3.credentials });
    await store.checkBucket();
    await store.detectCapabilities('');
    return {
      store,
      close: async () => {
        await store.close();
        await s3?.stop();
      },
    };
  },
  // s3rver keeps keys as file paths: no empty, '.' or '..' segments, none over 255 bytes;
  // its delimited listings skip directories below a common prefix.
  quirks: { pathLikeKeys: false, longSegments: false, deepCommonPrefixes: false, partCopy: false },
});
