// Readers for the deployment documents and files (docs/deployment.md, deploy/*), so that
// tests run and check exactly what they say.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { REPO_ROOT } from './cli.js';

export function repoFile(path: string): string {
  return readFileSync(join(REPO_ROOT, path), 'utf8');
}

/** KEY=VALUE lines of an EnvironmentFile / env example (comments and blank lines skipped, quotes removed). */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) throw new Error(`not a KEY=VALUE line: ${JSON.stringify(raw)}`);
    out[m[1]!] = m[2]!.replace(/^"(.*)"$/, '$1');
  }
  return out;
}

/** The `ENV` settings of a Containerfile (`ENV A=1 \` continuation lines included). */
export function containerfileEnv(text: string): Record<string, string> {
  const joined = text.split('\n').filter((l) => !l.trim().startsWith('#')).join('\n').replace(/\\\n/g, ' ');
  const out: Record<string, string> = {};
  for (const line of joined.split('\n')) {
    const m = /^ENV\s+(.*)$/.exec(line.trim());
    if (!m) continue;
    for (const pair of m[1]!.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)/g)) out[pair[1]!] = pair[2]!.replace(/^"(.*)"$/, '$1');
  }
  return out;
}

/** The fenced code blocks of a Markdown text, with their info string. */
export function codeBlocks(markdown: string): { lang: string; body: string }[] {
  return [...markdown.matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)].map((m) => ({ lang: m[1]!, body: m[2]! }));
}

/** A shell command as words: backslash-newline continuations joined, split on blanks (the documented commands quote nothing but the one --cmdline). */
export function shellWords(command: string): string[] {
  const words: string[] = [];
  for (const m of command.replace(/\\\n/g, ' ').matchAll(/"([^"]*)"|(\S+)/g)) words.push(m[1] ?? m[2]!);
  return words;
}

/** The documented command starting with `program` (the first such block of docs/deployment.md). */
export function documentedCommand(program: string): string[] {
  const block = codeBlocks(repoFile('docs/deployment.md')).find((b) => b.body.startsWith(program + ' '));
  if (!block) throw new Error(`docs/deployment.md has no code block starting with ${program}`);
  return shellWords(block.body);
}

/** Splits QEMU words (after the program name) into [option, value] pairs; every option here takes a value. */
export function qemuOptions(words: readonly string[]): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i < words.length; i += 2) {
    const opt = words[i]!;
    if (!opt.startsWith('-') || i + 1 >= words.length) throw new Error(`unexpected QEMU word ${JSON.stringify(opt)} in the documented command`);
    out.push([opt, words[i + 1]!]);
  }
  return out;
}
