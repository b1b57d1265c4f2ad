// Long-running commands stop on SIGINT/SIGTERM: in-flight requests complete, sockets are
// removed, then the process exits. A second signal exits at once.
import type { Logger } from '../util/log.js';

export function stopOnSignals(log: Logger, stop: () => Promise<void>): Promise<void> {
  return new Promise((resolve, reject) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) {
        log.warn('second signal: exiting without waiting', { signal });
        process.exit(1);
      }
      stopping = true;
      log.info('shutting down', { signal });
      stop().then(() => {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        resolve();
      }, reject);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
