// The S3 client's retry strategy on its own (src/backends/s3-retry.ts): which errors it
// retries, how many times, and its budget, with a test clock (no waiting: zero delays).
import { expect } from 'chai';
import type { RetryErrorType } from '@smithy/types';
import { DEFAULT_RETRY_POLICY, GatewayRetryStrategy } from '../../src/backends/s3-retry.js';

describe('GatewayRetryStrategy', () => {
  let t = 0;
  const strategy = (over: Partial<typeof DEFAULT_RETRY_POLICY> = {}): GatewayRetryStrategy =>
    new GatewayRetryStrategy({ ...DEFAULT_RETRY_POLICY, baseDelayMs: 0, throttlingBaseDelayMs: 0, ...over }, () => t);
  /** Retries granted to one request that keeps failing with `type`. */
  const retries = async (s: GatewayRetryStrategy, type: RetryErrorType = 'TRANSIENT'): Promise<number> => {
    let token = await s.acquireInitialRetryToken('');
    for (;;) {
      try {
        token = await s.refreshRetryTokenForRetry(token, { errorType: type });
      } catch {
        return token.getRetryCount();
      }
    }
  };
  beforeEach(() => {
    t = 0;
  });

  it('retries throttling and transient errors up to maxAttempts, never client or server errors', async () => {
    const s = strategy({ maxAttempts: 4 });
    expect(await retries(s, 'TRANSIENT')).to.equal(3);
    expect(await retries(s, 'THROTTLING')).to.equal(3);
    expect(await retries(s, 'CLIENT_ERROR')).to.equal(0);
    expect(await retries(s, 'SERVER_ERROR')).to.equal(0);
  });

  it('a drained budget refills with time, and successes give tokens back', async () => {
    const s = strategy({ maxAttempts: 3, budget: 10, retryCost: 5, refillPerSecond: 5 });
    expect(await retries(s)).to.equal(2);
    expect(await retries(s), 'budget empty').to.equal(0);
    expect(s.refusedForBudget).to.equal(1);
    t += 1000; // 5 tokens: one retry
    expect(await retries(s)).to.equal(1);
    t += 60_000;
    expect(s.available, 'never above the budget').to.equal(10);
    // A request retried once and then successful gets its retry's cost back.
    const token = await s.refreshRetryTokenForRetry(await s.acquireInitialRetryToken(''), { errorType: 'TRANSIENT' });
    expect(s.available).to.equal(5);
    s.recordSuccess(token);
    expect(s.available).to.equal(10);
  });
});
