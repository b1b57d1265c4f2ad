// The HTTP endpoint Prometheus scrapes: GET /metrics in the text exposition format.
import { createServer, type Server } from 'node:http';
import { ConfigError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { ListenAddress } from './address.js';
import type { Metrics } from './registry.js';

export class MetricsEndpoint {
  private constructor(private readonly server: Server, readonly address: ListenAddress) {}

  /** Listens on `at`; a port in use or an address not of this host is a ConfigError. */
  static async start(metrics: Metrics, at: ListenAddress, log: Logger): Promise<MetricsEndpoint> {
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (path !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('see /metrics\n');
        return;
      }
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
        (err: unknown) => {
          log.error('collecting metrics failed', { error: err });
          res.writeHead(500, { 'content-type': 'text/plain' }).end('collecting metrics failed\n');
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        const why = err.code === 'EADDRINUSE' ? 'address already in use' : err.code === 'EADDRNOTAVAIL' ? 'address not available on this host' : err.code === 'EACCES' ? 'permission denied' : err.message;
        reject(new ConfigError(`--metrics: cannot listen on ${at.host}:${at.port}: ${why}`));
      });
      server.listen(at.port, at.host, () => resolve());
    });
    server.on('error', (err) => log.error('metrics endpoint failed', { error: err }));
    const bound = server.address();
    const port = typeof bound === 'object' && bound !== null ? bound.port : at.port;
    log.info('serving metrics', { url: `http://${at.host.includes(':') ? `[${at.host}]` : at.host}:${port}/metrics` });
    return new MetricsEndpoint(server, { host: at.host, port });
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
