// Reports an S3 client's traffic to an S3Observer through two SDK middlewares: one around
// each request (how many attempts it took: retries), one around each attempt, below the
// retry strategy (HTTP status, body bytes each way).
import type { S3Client } from '@aws-sdk/client-s3';
import type { S3Observer } from '../metrics/observer.js';

interface HttpMessage {
  readonly method?: string;
  readonly statusCode?: number;
  readonly headers?: Record<string, string | undefined>;
}

interface SdkFailure {
  readonly $metadata?: { readonly attempts?: number; readonly httpStatusCode?: number };
  readonly $response?: HttpMessage;
}

function operationOf(commandName: unknown): string {
  return typeof commandName === 'string' ? commandName.replace(/Command$/, '') : 'unknown';
}

function contentLength(m: HttpMessage | undefined): number {
  const v = Number(m?.headers?.['content-length'] ?? 0);
  return Number.isFinite(v) && v > 0 ? v : 0;
}

export function observeS3Client(client: S3Client, obs: S3Observer): void {
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const op = operationOf(context.commandName);
      try {
        const out = await next(args);
        obs.finished(op, (out.output as { $metadata?: { attempts?: number } }).$metadata?.attempts ?? 1);
        return out;
      } catch (err) {
        obs.finished(op, (err as SdkFailure).$metadata?.attempts ?? 1);
        throw err;
      }
    },
    { step: 'initialize', name: 'vhostS3MetricsRequest' },
  );
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const op = operationOf(context.commandName);
      const req = args.request as HttpMessage;
      const sent = contentLength(req);
      // A HEAD's Content-Length is the object's, not bytes that came over the wire.
      const received = (res: HttpMessage | undefined): number => (req.method === 'HEAD' ? 0 : contentLength(res));
      try {
        const out = await next(args);
        const res = out.response as HttpMessage;
        obs.attempt(op, res.statusCode ?? 0, sent, received(res));
        return out;
      } catch (err) {
        const e = err as SdkFailure;
        obs.attempt(op, e.$response?.statusCode ?? e.$metadata?.httpStatusCode ?? 0, sent, received(e.$response));
        throw err;
      }
    },
    { step: 'deserialize', name: 'vhostS3MetricsAttempt' },
  );
}
