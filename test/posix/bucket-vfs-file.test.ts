// The BucketVfs behavioural suite over the file store (a local directory).
import { FileStore } from '../../src/backends/file-store.js';
import { TmpDir } from '../support/tmp.js';
import { bucketVfsSuite } from './suite.js';

const dir = new TmpDir('vhost-s3-posix-filestore-');

bucketVfsSuite({
  name: 'the file store',
  open: async () => {
    const store = await FileStore.open(dir.file('store'), { create: true, noSync: true, minPartSize: 64 * 1024 });
    return {
      store,
      close: async () => {
        await store.close();
        dir.remove();
      },
    };
  },
  // A key segment becomes a file name: at most 254 bytes.
  quirks: { longSegments: false },
});
