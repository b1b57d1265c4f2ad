#!/usr/bin/env node
// Thin launcher: the compiled CLI lives in dist/ (npm run build).
// The AWS SDK warns on every start that it will drop Node 20 in 2027; that is known and
// documented, and must not clutter every command's output.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
import('../dist/src/cli/main.js').then((m) => m.main(process.argv.slice(2)));
