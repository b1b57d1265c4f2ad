// --metrics HOST:PORT: where the Prometheus endpoint listens.
import { isIP } from 'node:net';
import { ConfigError } from '../util/errors.js';

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

/** "127.0.0.1:9464", "[::1]:9464", "localhost:9464", ":9464" (all interfaces); "" → null (off). */
export function parseListenAddress(text: string, option = '--metrics'): ListenAddress | null {
  if (text === '') return null;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]*)):(\d{1,5})$/.exec(text);
  const port = m === null ? NaN : Number(m[3]);
  if (m === null || !(port >= 1 && port <= 65535)) {
    throw new ConfigError(`${option} must be HOST:PORT with a port from 1 to 65535 (e.g. 127.0.0.1:9464), got "${text}"`);
  }
  const host = m[1] ?? m[2]!;
  if (m[1] !== undefined && isIP(host) !== 6) throw new ConfigError(`${option}: "${host}" is not an IPv6 address`);
  return { host: host === '' ? '0.0.0.0' : host, port };
}
