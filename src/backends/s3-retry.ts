// The retry strategy of the S3 client, made for a block/file gateway rather than for an
// application that can give up.
//
// The SDK's standard strategy (in the SDK installed here) keeps a client-wide budget of
// 500 tokens, spends 14 per retry (5 after throttling), refills only through successes
// (1 per first-try success, the retry's cost back after a retried one) and never with
// time. With ~30% of requests failing a few hundred requests empty it, and from then on a
// request fails at its first fault: the guest gets EIO, and a failed FLUSH can abort an
// ext4 journal. A disk would rather wait.
//
// Here: the same classification of errors (the SDK's errorType: throttling and transient
// errors — 429/SlowDown, 500/502/503/504, timeouts, resets — are retried, the rest not),
// capped exponential backoff with full jitter, and a budget that a store failing a third
// of its requests does not empty (a retry costs 5, so first-try successes and the refunds
// of retried ones pay for it) and that also refills with time, so that after a drain (a
// store that was down) retries come back within seconds even with no success to refill
// it. `maxAttempts` and the delay cap bound how long one request can take when the store
// stays down.
import type { RetryErrorInfo, RetryStrategyV2, StandardRetryToken } from '@smithy/types';

export interface RetryPolicy {
  /** Attempts per request including the first. */
  readonly maxAttempts: number;
  /** Backoff base: the n-th retry waits a random time in [0, min(cap, base × 2^(n-1))). */
  readonly baseDelayMs: number;
  /** Base after a throttling answer (SlowDown, 429). */
  readonly throttlingBaseDelayMs: number;
  readonly maxDelayMs: number;
  /** Tokens of the budget (its size, and what it starts with). */
  readonly budget: number;
  /** Tokens a retry spends. */
  readonly retryCost: number;
  /** Tokens the budget regains per second whatever happens. */
  readonly refillPerSecond: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 10,
  baseDelayMs: 50,
  throttlingBaseDelayMs: 500,
  maxDelayMs: 2000,
  budget: 1000,
  retryCost: 5,
  refillPerSecond: 20,
};

/** The longest a request can spend waiting between attempts (not counting the attempts themselves). */
export function maxTotalDelayMs(p: RetryPolicy): number {
  let total = 0;
  for (let n = 1; n < p.maxAttempts; n++) total += Math.min(p.maxDelayMs, Math.max(p.baseDelayMs, p.throttlingBaseDelayMs) * 2 ** (n - 1));
  return total;
}

class Token implements StandardRetryToken {
  constructor(
    private readonly count: number,
    private readonly cost: number | undefined,
  ) {}
  getRetryCount(): number {
    return this.count;
  }
  /** 0: the strategy has already waited (as the SDK's own strategies do). */
  getRetryDelay(): number {
    return 0;
  }
  getRetryCost(): number | undefined {
    return this.cost;
  }
}

export class GatewayRetryStrategy implements RetryStrategyV2 {
  readonly mode = 'standard';
  /** Retries refused because the budget was empty (for logs and tests). */
  refusedForBudget = 0;
  private tokens: number;
  private refilledAt: number;

  constructor(
    readonly policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!Number.isSafeInteger(policy.maxAttempts) || policy.maxAttempts < 1) throw new RangeError('maxAttempts must be a positive integer');
    this.tokens = policy.budget;
    this.refilledAt = now();
  }

  /** Tokens left (after the refill due by now). */
  get available(): number {
    this.refill();
    return this.tokens;
  }

  async acquireInitialRetryToken(_scope: string): Promise<StandardRetryToken> {
    return new Token(0, undefined);
  }

  async refreshRetryTokenForRetry(token: StandardRetryToken, info: RetryErrorInfo): Promise<StandardRetryToken> {
    const retryable = info.errorType === 'THROTTLING' || info.errorType === 'TRANSIENT';
    const attempt = token.getRetryCount() + 1;
    if (!retryable || attempt >= this.policy.maxAttempts) throw new Error('not retried');
    this.refill();
    if (this.tokens < this.policy.retryCost) {
      this.refusedForBudget++;
      throw new Error('no retry token available');
    }
    this.tokens -= this.policy.retryCost;
    const base = info.errorType === 'THROTTLING' ? this.policy.throttlingBaseDelayMs : this.policy.baseDelayMs;
    let delay = Math.floor(Math.random() * Math.min(this.policy.maxDelayMs, base * 2 ** (attempt - 1)));
    // A Retry-After hint may lengthen the wait, by at most the cap.
    if (info.retryAfterHint instanceof Date) delay = Math.max(delay, Math.min(info.retryAfterHint.getTime() - Date.now(), this.policy.maxDelayMs));
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
    return new Token(attempt, this.policy.retryCost);
  }

  recordSuccess(token: StandardRetryToken): void {
    this.refill();
    this.tokens = Math.min(this.policy.budget, this.tokens + (token.getRetryCost() ?? 1));
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.policy.budget, this.tokens + ((t - this.refilledAt) / 1000) * this.policy.refillPerSecond);
    this.refilledAt = t;
  }
}
