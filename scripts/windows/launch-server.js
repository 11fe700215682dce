// The Playwright browser server win-automation drives: `node launch-server.js SERVER.json`.
//
// Run by the Node that ships in the `playwright` wheel (driver/node.exe on the VM, driver/node in
// the tests), requiring the playwright-core of the same wheel (driver/package), so the server is
// exactly the client's version. SERVER.json holds:
//   {"package": "<driver/package dir>", "host": "0.0.0.0", "port": 9323,
//    "wsPathFile": "<file holding the wsPath>", "channel": "msedge" | null,
//    "executablePath": "<browser binary>" | null, "headless": true,
//    "logFile": "<file its messages are appended to>" | null,
//    "browsersPath": "<PLAYWRIGHT_BROWSERS_PATH for channel chromium>" | null}
// The wsPath is read from its own file (readable by Administrators and SYSTEM only on the VM), so
// it is never on a command line, in the task's definition or in this script's output.
// The process exits non-zero when the browser dies, so the scheduled task restarts it.
'use strict';
const fs = require('fs');
const path = require('path');

let logFile = null;
function say(stream, message) {
  const line = `launch-server: ${message}\n`;
  stream.write(line);
  if (logFile) {
    try {
      fs.appendFileSync(logFile, `${new Date().toISOString()} ${line}`);
    } catch (err) {
      stream.write(`launch-server: cannot append to the log file: ${err.code || err.message}\n`);
    }
  }
}

function fail(message) {
  say(process.stderr, message);
  process.exit(2);
}

const configFile = process.argv[2];
if (!configFile) fail('usage: node launch-server.js SERVER.json');
let config;
try {
  config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
} catch (err) {
  fail(`cannot read ${configFile}: ${err.message}`);
}
logFile = config.logFile || null;
if (config.browsersPath) process.env.PLAYWRIGHT_BROWSERS_PATH = config.browsersPath;
let wsPath;
try {
  wsPath = fs.readFileSync(config.wsPathFile, 'utf8').trim();
} catch (err) {
  fail(`cannot read the wsPath file: ${err.code || err.message}`);
}
if (!/^[A-Za-z0-9_-]{16,}$/.test(wsPath)) fail('the wsPath file does not hold a wsPath of 16+ URL-safe characters');

const pkg = path.resolve(path.dirname(configFile), config.package || 'driver/package');
const { chromium } = require(pkg);
const version = require(path.join(pkg, 'package.json')).version;

const options = {
  host: config.host || '127.0.0.1',
  port: config.port || 9323,
  wsPath: '/' + wsPath,
  headless: config.headless !== false,
};
if (config.channel) options.channel = config.channel;
if (config.executablePath) options.executablePath = config.executablePath;

(async () => {
  let server;
  try {
    server = await chromium.launchServer(options);
  } catch (err) {
    const first = String(err.message || err).split('\n')[0];
    fail(`cannot launch the browser (${config.channel || config.executablePath || 'chromium'}): ${first}`);
  }
  const stop = async () => {
    await server.close().catch(() => {});
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  server.process().on('exit', (code) => {
    say(process.stderr, `the browser exited (${code}); stopping`);
    process.exit(1);
  });
  say(
    process.stdout,
    `playwright-core ${version} listening on ${options.host}:${options.port} ` +
      `(${options.channel || 'executablePath'}, ${options.headless ? 'headless' : 'headed'})`,
  );
})();
