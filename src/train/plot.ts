/**
 * Training curves as a standalone SVG: train loss (and eval loss) per step, and eval metrics.
 * A multi-task run's per-task eval numbers (`loss/<task>`, `accuracy/<task>`) get a curve each.
 */
import { readFileSync } from 'node:fs';
import { AdaptkitError } from '../tensor/index.js';

export interface MetricsFile {
  records: Record<string, unknown>[];
  /** `file:line: reason` of each line that was not a JSON object (a kill mid-write tears the last one). */
  malformed: string[];
}

/** The records of a metrics.jsonl file; malformed lines are skipped and listed, never fatal. */
export function readMetrics(path: string): MetricsFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new AdaptkitError(`${path}: cannot read metrics (${(e as Error).message})`);
  }
  const records: Record<string, unknown>[] = [];
  const malformed: string[] = [];
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      malformed.push(`${path}:${i + 1}: ${(e as Error).message}`);
      return;
    }
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) records.push(v as Record<string, unknown>);
    else malformed.push(`${path}:${i + 1}: not a JSON object`);
  });
  return { records, malformed };
}

interface Series {
  name: string;
  color: string;
  points: [number, number][];
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function panel(title: string, series: Series[], x0: number, y0: number, w: number, h: number): string {
  const pts = series.flatMap((s) => s.points);
  if (pts.length === 0) return '';
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]).filter(Number.isFinite);
  const [xmin, xmax] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  let [ymin, ymax] = [Math.min(...ys), Math.max(...ys)];
  // a series that is never negative (a loss, an accuracy) gets no negative axis
  const nonNegative = ymin >= 0;
  if (ymin === ymax) [ymin, ymax] = [ymin - 1, ymax + 1];
  const pad = 0.05 * (ymax - ymin);
  ymin -= pad;
  if (nonNegative) ymin = Math.max(0, ymin);
  ymax += pad;
  const L = 56, R = 12, T = 28, B = 34;
  const sx = (x: number) => x0 + L + ((x - xmin) / (xmax - xmin)) * (w - L - R);
  const sy = (y: number) => y0 + T + (1 - (y - ymin) / (ymax - ymin)) * (h - T - B);
  let out = `<text x="${x0 + w / 2}" y="${y0 + 18}" text-anchor="middle" font-size="14" font-weight="bold">${esc(title)}</text>`;
  out += `<rect x="${x0 + L}" y="${y0 + T}" width="${w - L - R}" height="${h - T - B}" fill="none" stroke="#999"/>`;
  for (let i = 0; i <= 4; i++) {
    const y = ymin + ((ymax - ymin) * i) / 4;
    out += `<line x1="${x0 + L}" x2="${x0 + w - R}" y1="${sy(y)}" y2="${sy(y)}" stroke="#eee"/>`;
    out += `<text x="${x0 + L - 6}" y="${sy(y) + 4}" text-anchor="end" font-size="11">${y.toPrecision(3)}</text>`;
    const x = xmin + ((xmax - xmin) * i) / 4;
    out += `<text x="${sx(x)}" y="${y0 + h - B + 16}" text-anchor="middle" font-size="11">${Math.round(x)}</text>`;
  }
  out += `<text x="${x0 + L + (w - L - R) / 2}" y="${y0 + h - 4}" text-anchor="middle" font-size="11">step</text>`;
  series.forEach((s, i) => {
    const ok = s.points.filter((p) => Number.isFinite(p[1]));
    if (ok.length === 0) return;
    const d = ok.map((p, j) => `${j ? 'L' : 'M'}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join('');
    out += `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.8"/>`;
    if (ok.length < 40) for (const p of ok) out += `<circle cx="${sx(p[0])}" cy="${sy(p[1])}" r="2.5" fill="${s.color}"/>`;
    out += `<rect x="${x0 + w - R - 130}" y="${y0 + T + 8 + i * 16}" width="10" height="10" fill="${s.color}"/>`;
    out += `<text x="${x0 + w - R - 115}" y="${y0 + T + 17 + i * 16}" font-size="11">${esc(s.name)}</text>`;
  });
  return out;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f'];

/** SVG of the curves in a metrics.jsonl file (malformed lines are skipped with a warning naming file and line). */
export function plotMetrics(metricsPath: string, title = 'training'): string {
  const { records: lines, malformed } = readMetrics(metricsPath);
  if (malformed.length) {
    const more = malformed.length > 1 ? ` (and ${malformed.length - 1} more)` : '';
    process.emitWarning(`skipped a malformed metrics line: ${malformed[0]}${more}`, { code: 'ADAPTKIT_METRICS' });
  }
  const train = lines.filter((l) => l.kind === 'train');
  const evals = lines.filter((l) => l.kind === 'eval');
  // smooth the train loss a little so the trend shows through batch noise
  let ema = NaN;
  const smooth = train.map((l) => {
    const v = Number(l.loss);
    ema = Number.isNaN(ema) ? v : 0.8 * ema + 0.2 * v;
    return [Number(l.step), ema] as [number, number];
  });
  const lossSeries: Series[] = [
    { name: 'train loss (raw)', color: '#aec7e8', points: train.map((l) => [Number(l.step), Number(l.loss)]) },
    { name: 'train loss (EMA)', color: COLORS[0]!, points: smooth },
  ];
  const evalKeys = [...new Set(evals.flatMap((e) => Object.keys(e)))];
  const curve = (k: string) => evals.filter((e) => k in e).map((e) => [Number(e.step), Number(e[k])] as [number, number]);
  const taskLosses = evalKeys.filter((k) => k.startsWith('loss/'));
  if (evals.some((e) => 'loss' in e)) lossSeries.push({ name: taskLosses.length ? 'eval loss (task mean)' : 'eval loss', color: COLORS[1]!, points: curve('loss') });
  taskLosses.forEach((k, i) => lossSeries.push({ name: `eval ${k}`, color: COLORS[(i + 2) % COLORS.length]!, points: curve(k) }));
  const metricKeys = evalKeys.filter((k) => !['kind', 'step', 'loss', 'perplexity'].includes(k) && !k.startsWith('loss/') && !k.startsWith('perplexity/'));
  const metricSeries = metricKeys.map((k, i) => ({ name: k, color: COLORS[(i + 2) % COLORS.length]!, points: curve(k) }));
  const W = 760;
  const H = 300;
  const panels = [panel(`${title}: loss`, lossSeries, 0, 0, W, H)];
  if (metricSeries.length) panels.push(panel(`${title}: eval metrics`, metricSeries, 0, H, W, H));
  const height = H * panels.length;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>${panels.join('')}</svg>\n`;
}
