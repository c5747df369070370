'use strict';
// Real Strata servers for the tests, from the repository's own venv: a standalone (spawned
// here, ready when it prints its `ready port=N` line) and a cluster of etcd + bookies + two
// brokers (through cluster_helper.py, which reuses tests/cluster.py). Every process is ended
// by the PID started here; every wait is bounded.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const REPO = path.resolve(__dirname, '..', '..', '..');
const VENV_BIN = path.join(REPO, '.venv', 'bin');
const READY_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 15_000;

function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `strata-node-${prefix}-`));
}

/** Resolves with the first match of `pattern` in the process's stdout; bounded. */
function waitForLine(child, pattern, what, timeoutMs = READY_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => finish(new Error(`${what}: no ready line within ${timeoutMs} ms:\n${seen.slice(-2000)}`)), timeoutMs);
    const onData = (chunk) => {
      seen += chunk.toString();
      const match = seen.match(pattern);
      if (match) finish(null, match);
    };
    const onExit = (code) => finish(new Error(`${what} exited with ${code} before ready:\n${seen.slice(-2000)}`));
    function finish(error, match) {
      clearTimeout(timer);
      child.stdout.off('data', onData);
      child.off('exit', onExit);
      if (error) reject(error);
      else resolve(match);
    }
    child.stdout.on('data', onData);
    child.on('exit', onExit);
  });
}

function stopChild(child, signal = 'SIGTERM') {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve();
      return;
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}

/** `strata standalone` on a free port; `kill()` is SIGKILL by PID, `restart()` same port and data. */
class Standalone {
  constructor() {
    this.dataDir = tempDir('standalone');
    this.port = 0;
    this.child = null;
  }

  get address() {
    return `127.0.0.1:${this.port}`;
  }

  async start() {
    const args = ['standalone', '--data-dir', this.dataDir, '--port', String(this.port), '--metrics-port', '-1'];
    this.child = spawn(path.join(VENV_BIN, 'strata'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stderr.on('data', () => {}); // logs; drained so the process never blocks
    const match = await waitForLine(this.child, /ready port=(\d+)/, 'strata standalone');
    this.port = Number(match[1]);
    this.child.stdout.on('data', () => {});
    return this;
  }

  async kill() {
    await stopChild(this.child, 'SIGKILL');
  }

  async restart() {
    await this.kill();
    return this.start();
  }

  async stop() {
    if (this.child !== null) await stopChild(this.child);
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** etcd + 2 bookies + 2 brokers (cluster_helper.py prints their addresses as JSON). */
class Cluster {
  constructor() {
    this.dir = tempDir('cluster');
    this.child = null;
    this.brokers = [];
  }

  async start() {
    this.child = spawn(path.join(VENV_BIN, 'python'), [path.join(__dirname, 'cluster_helper.py'), this.dir],
      { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'] });
    let errors = '';
    this.child.stderr.on('data', (chunk) => { errors = (errors + chunk.toString()).slice(-4000); });
    try {
      const match = await waitForLine(this.child, /^CLUSTER (.*)$/m, 'cluster helper', 90_000);
      this.brokers = JSON.parse(match[1]).brokers;
    } catch (error) {
      error.message += `\n${errors}`;
      throw error;
    }
    this.child.stdout.on('data', () => {});
    return this;
  }

  async stop() {
    if (this.child === null) return;
    // Closing stdin tells the helper to stop the cluster (by the PIDs it started).
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill('SIGTERM'), 30_000);
    await exited;
    clearTimeout(timer);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Run a Python script with the venv's interpreter; resolves with its stdout (bounded). */
function runPython(args, timeoutMs = 60_000) {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(VENV_BIN, 'python'), args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk) => { out += chunk; });
    child.stderr.on('data', (chunk) => { err += chunk; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`python ${args.join(' ')} exited ${code ?? signal}:\n${err.slice(-3000)}`));
    });
  });
}

module.exports = { Standalone, Cluster, runPython, REPO };
