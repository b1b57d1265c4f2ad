// Long-running commands stop on SIGINT/SIGTERM: in-flight requests complete, sockets are
// removed, then the process exits. A second signal exits at once. (The serving commands
// use these through gateway.ts; mount directly.)
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

/**
 * Catches SIGINT/SIGTERM while sockets or mounts are being created, so that a signal sent
 * as soon as one exists cannot kill the process before it removed them. release(true)
 * sends a caught signal again (to the stopOnSignals handlers installed meanwhile),
 * release(false) drops it (the start failed and the command exits anyway).
 */
export function holdSignals(): { release(redeliver: boolean): void } {
  let caught: NodeJS.Signals | null = null;
  const hold = (signal: NodeJS.Signals): void => {
    caught ??= signal;
  };
  process.on('SIGINT', hold);
  process.on('SIGTERM', hold);
  return {
    release(redeliver: boolean): void {
      process.off('SIGINT', hold);
      process.off('SIGTERM', hold);
      if (redeliver && caught !== null) process.kill(process.pid, caught);
    },
  };
}
