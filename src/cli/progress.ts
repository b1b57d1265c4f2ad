// A one-line progress bar on stderr, drawn only when stderr is a terminal and at most
// ten times a second; on pipes and in CI nothing is printed.
export class ProgressBar {
  private last = 0;
  private readonly start = Date.now();
  private readonly enabled: boolean;

  constructor(private readonly label: string, private readonly unit: 'bytes' | 'items') {
    this.enabled = process.stderr.isTTY === true;
  }

  update = (done: number, total: number): void => {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.last < 100 && done < total) return;
    this.last = now;
    const frac = total > 0 ? Math.min(1, done / total) : 1;
    const width = 30;
    const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, ' ');
    const secs = Math.max((now - this.start) / 1000, 0.001);
    const rate = this.unit === 'bytes' ? `${(done / 2 ** 20 / secs).toFixed(1)} MiB/s` : `${(done / secs).toFixed(1)}/s`;
    process.stderr.write(`\r${this.label} [${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ${rate}   `);
  };

  done(): void {
    if (this.enabled) process.stderr.write('\n');
  }
}
