// Store locators and createObjectStore for the local kinds (s3 is in s3-store.test.ts).
import { expect } from 'chai';
import { createObjectStore, parseLocator } from '../../src/backends/locator.js';
import { TmpDir } from '../support/tmp.js';
import { expectErrno } from './conformance.js';

describe('store locators', () => {
  let d: TmpDir;
  beforeEach(() => {
    d = new TmpDir('vhost-s3-locator-');
  });
  afterEach(() => d.remove());

  it('parses locators', () => {
    expect(parseLocator('s3://bucket')).to.deep.equal({ kind: 's3', bucket: 'bucket', prefix: '' });
    expect(parseLocator('s3://bucket/')).to.deep.equal({ kind: 's3', bucket: 'bucket', prefix: '' });
    expect(parseLocator('s3://my.bucket-1/a/b/')).to.deep.equal({ kind: 's3', bucket: 'my.bucket-1', prefix: 'a/b/' });
    expect(parseLocator('file:/var/lib/store')).to.deep.equal({ kind: 'file', path: '/var/lib/store', prefix: '' });
    expect(parseLocator('file:///var/lib/my%20store')).to.deep.equal({ kind: 'file', path: '/var/lib/my store', prefix: '' });
    expect(parseLocator('memory:')).to.deep.equal({ kind: 'memory', prefix: '' });
    for (const bad of ['s3://', 's3://UPPER', 'http://x', '/plain/path', 'file:', 'file://host/x']) expect(() => parseLocator(bad), bad).to.throw(/bad store locator/);
  });

  it('createObjectStore opens file: locators; a missing directory is ENOENT unless created', async () => {
    const e = await expectErrno(createObjectStore(`file:${d.file('nope')}`), 'ENOENT');
    expect(e.missingContainer).to.equal(true);
    const { store, prefix } = await createObjectStore(`file://${d.file('made')}`, { file: { create: true } });
    expect(prefix).to.equal('');
    expect(store.kind).to.equal('file');
    await store.put('k', new Uint8Array([1]));
    expect((await store.get('k')).body).to.deep.equal(new Uint8Array([1]));
  });

  it('opens memory: stores', async () => {
    const { store, prefix } = await createObjectStore('memory:');
    expect(store.kind).to.equal('memory');
    expect(prefix).to.equal('');
  });
});
