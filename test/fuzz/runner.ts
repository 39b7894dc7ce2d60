/**
 * The parent side of the loader fuzz test: one child process per format works through its mutants;
 * this side arms a timer per mutant and polls the child's resident memory, kills it on a hang, a
 * blow-up or a crash, records that mutant (by index, so it reproduces) and starts a new child at
 * the next one. Startup is paid once per format, not once per mutant.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Result } from './child.js';

const CHILD = fileURLToPath(new URL('./child.ts', import.meta.url));

export type FindingKind = 'unclear' | 'bad-output' | 'hang' | 'crash' | 'memory';

export interface Finding {
  index: number;
  id: string;
  desc: string;
  kind: FindingKind;
  reason: string;
  message?: string;
  where?: string;
}

export interface FormatReport {
  format: string;
  total: number;
  fixed: number;
  counts: Record<'ok' | 'clear' | FindingKind, number>;
  findings: Finding[];
  wallMs: number;
  peakRssMb: number;
  slowest: { id: string; ms: number };
  restarts: number;
  /** Set when the run stopped early because one kind of costly finding kept repeating. */
  stoppedEarly?: string;
  work: string;
}

export interface RunOptions {
  base: number;
  count: number;
  /** Per-mutant wall-clock limit. */
  timeoutMs: number;
  /** Resident set size at which the child is killed and the mutant recorded. */
  rssLimitMb: number;
  /** V8 old-space cap, below the RSS limit, so heap growth ends as a recorded crash rather than swapping. */
  heapMb: number;
  startupMs: number;
  /** Stop after this many hangs, crashes and memory kills together (each costs a restart). */
  maxKills: number;
}

interface Current {
  index: number;
  id: string;
  desc: string;
}

function rssMb(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

type ChildEnd =
  | { end: 'done' }
  | { end: 'hang' | 'memory' | 'crash'; reason: string; message?: string };

export async function runFormat(format: string, o: RunOptions): Promise<FormatReport> {
  // every mutant is written to disk before it is loaded: tmpfs keeps that from being the cost
  const root = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  const work = mkdtempSync(join(root, `adaptkit-fuzz-${format.replace(/\W/g, '')}-`));
  const report: FormatReport = {
    format, total: 0, fixed: 0, counts: { ok: 0, clear: 0, unclear: 0, 'bad-output': 0, hang: 0, crash: 0, memory: 0 },
    findings: [], wallMs: 0, peakRssMb: 0, slowest: { id: '', ms: 0 }, restarts: 0, work,
  };
  const t0 = performance.now();
  let next = 0;
  let total = Number.POSITIVE_INFINITY;
  let kills = 0;
  const currentFile = join(work, 'current.json');
  try {
    while (next < total) {
      const r = await runChild(format, next, o, work, {
        ready(fixed, n) {
          report.fixed = fixed;
          total = n;
        },
        result(res) {
          next = res.index + 1;
          if (res.ms > report.slowest.ms) report.slowest = { id: res.id, ms: res.ms };
          report.peakRssMb = Math.max(report.peakRssMb, res.rss / 2 ** 20);
          if (res.status === 'ok' || res.status === 'clear') report.counts[res.status]++;
          else {
            report.counts[res.status]++;
            report.findings.push({ index: res.index, id: res.id, desc: res.desc, kind: res.status, reason: res.reason ?? '', message: res.message, where: res.where });
          }
          if (res.rss / 2 ** 20 > o.rssLimitMb) {
            report.counts.memory++;
            report.findings.push({ index: res.index, id: res.id, desc: res.desc, kind: 'memory', reason: `resident memory ${Math.round(res.rss / 2 ** 20)} MB after the load (limit ${o.rssLimitMb} MB)` });
          }
        },
        rss(mb) {
          report.peakRssMb = Math.max(report.peakRssMb, mb);
        },
      });
      if (r.end === 'done') break;
      if (!Number.isFinite(total)) throw new Error(`${format}: the fuzz child did not start: ${r.reason}\n${r.message ?? ''}`);
      const cur: Current = existsSync(currentFile) ? (JSON.parse(readFileSync(currentFile, 'utf8')) as Current) : { index: next, id: `${format}#${next}`, desc: '?' };
      const kind: FindingKind = r.end === 'crash' && /heap limit|out of memory/i.test(r.message ?? '') ? 'memory' : r.end;
      report.counts[kind]++;
      report.findings.push({ index: cur.index, id: cur.id, desc: cur.desc, kind, reason: r.reason, message: r.message });
      next = cur.index + 1;
      report.restarts++;
      if (++kills >= o.maxKills && next < total) {
        report.stoppedEarly = `stopped after ${kills} hangs/crashes/memory kills; ${total - next} mutants not run`;
        break;
      }
    }
  } finally {
    report.total = Number.isFinite(total) ? total : 0;
    report.wallMs = performance.now() - t0;
    rmSync(work, { recursive: true, force: true });
  }
  return report;
}

interface Handlers {
  ready(fixed: number, total: number): void;
  result(r: Result): void;
  rss(mb: number): void;
}

function runChild(format: string, start: number, o: RunOptions, work: string, h: Handlers): Promise<ChildEnd> {
  return new Promise((resolve) => {
    const child: ChildProcess = fork(CHILD, [format, String(start), String(o.count), String(o.base), work], {
      execArgv: ['--import', 'tsx', `--max-old-space-size=${o.heapMb}`],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    let ended: ChildEnd | null = null;
    let started = false;
    let timer: NodeJS.Timeout | null = null;
    const finish = (e: ChildEnd) => {
      if (ended) return;
      ended = e;
      if (timer) clearTimeout(timer);
      clearInterval(poll);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    };
    const arm = (ms: number, what: string) => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => finish({ end: 'hang', reason: `${what} ${ms} ms` }), ms);
    };
    arm(o.startupMs, 'no start within');
    const poll = setInterval(() => {
      const mb = child.pid ? rssMb(child.pid) : null;
      if (mb === null) return;
      h.rss(mb);
      if (mb > o.rssLimitMb) finish({ end: 'memory', reason: `resident memory reached ${Math.round(mb)} MB (limit ${o.rssLimitMb} MB)` });
    }, 25);
    child.on('message', (m: { type: 'ready'; fixed: number; total: number } | { type: 'done' } | Result) => {
      if (ended) return;
      if (m.type === 'ready') {
        started = true;
        h.ready(m.fixed, m.total);
      } else if (m.type === 'result') h.result(m);
      else if (m.type === 'done') {
        finish({ end: 'done' });
        return;
      }
      arm(o.timeoutMs, 'no result within');
    });
    child.on('exit', (code, signal) => {
      if (!ended) {
        const reason = started ? `child exited (code ${code}, signal ${signal})` : `child failed to start (code ${code}, signal ${signal})`;
        finish({ end: 'crash', reason, message: stderr.trim().split('\n').slice(-6).join('\n') });
      }
      resolve(ended!);
    });
  });
}

/** Findings grouped by cause: same kind, same reason, thrown from the same place. */
export function groupFindings(r: FormatReport): { count: number; examples: Finding[] }[] {
  const groups = new Map<string, { count: number; examples: Finding[] }>();
  for (const f of r.findings) {
    const key = `${f.kind}|${f.reason.replace(/\d+/g, 'N')}|${f.where ?? ''}`;
    const g = groups.get(key) ?? { count: 0, examples: [] };
    g.count++;
    // up to three examples with different messages
    const shape = (m?: string) => (m ?? '').replace(/\d+/g, 'N').slice(0, 80);
    if (g.examples.length < 3 && !g.examples.some((e) => shape(e.message) === shape(f.message))) g.examples.push(f);
    groups.set(key, g);
  }
  return [...groups.values()].sort((a, b) => b.count - a.count);
}

export function describeReport(r: FormatReport): string[] {
  const c = r.counts;
  const lines = [
    `${r.format}: ${r.total} mutants (${r.fixed} named) in ${(r.wallMs / 1000).toFixed(1)} s: ok ${c.ok}, clear error ${c.clear}, ` +
      `unclear ${c.unclear}, bad output ${c['bad-output']}, hang ${c.hang}, crash ${c.crash}, memory ${c.memory}; ` +
      `peak RSS ${Math.round(r.peakRssMb)} MB; slowest ${Math.round(r.slowest.ms)} ms (${r.slowest.id}); restarts ${r.restarts}`,
  ];
  if (r.stoppedEarly) lines.push(`  ${r.stoppedEarly}`);
  for (const g of groupFindings(r)) {
    const f0 = g.examples[0]!;
    lines.push(`  ${g.count} x ${f0.kind}: ${f0.reason}${f0.where ? ` at ${f0.where}` : ''}`);
    for (const f of g.examples) {
      const msg = (f.message ?? '').split(r.work).join('<dir>').replace(/\s+/g, ' ');
      lines.push(`      e.g. ${f.id}: ${f.desc}`);
      if (msg) lines.push(`        -> ${msg.slice(0, 240)}`);
    }
  }
  return lines;
}
