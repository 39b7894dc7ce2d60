/** Training data from CSV/TSV: RFC 4180 quoting, line numbers in errors, column roles, and every shared dataset. */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { type DataRecord, type ReadOptions, DataError, readRecords } from '../src/train/data.js';
import { dataDir } from '../src/io/data.js';

const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-data-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const file = (name: string, text: string): string => {
  const p = join(tmp, name);
  writeFileSync(p, text);
  return p;
};

/** Asserts a DataError whose message starts with `path:line: ` and matches `why`. */
function throwsAt(fn: () => unknown, path: string, line: number, why: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof DataError, `expected a DataError, got ${String(e)}`);
    assert.ok(e.message.startsWith(`${path}:${line}: `), `expected ${path}:${line}: in "${e.message}"`);
    assert.match(e.message, why);
    return true;
  });
}

const texts = (rs: DataRecord[]) => rs.map((r) => (r.kind === 'label' || r.kind === 'text' ? r.text : r.kind === 'completion' ? r.prompt : '?'));

describe('CSV and TSV quoting', () => {
  for (const [fmt, d] of [['csv', ','], ['tsv', '\t']] as const) {
    it(`${fmt}: quoted delimiters, line breaks and doubled quotes, with a BOM and CRLF or LF`, () => {
      const rows = [`text${d}label`, `"a${d} b"${d}x`, `"two\r\nlines"${d}y`, `"say ""hi"""${d}z`, `plain${d}w`];
      const want = (nl: string) => [
        { kind: 'label', text: `a${d} b`, label: 'x' },
        { kind: 'label', text: `two${nl}lines`, label: 'y' },
        { kind: 'label', text: 'say "hi"', label: 'z' },
        { kind: 'label', text: 'plain', label: 'w' },
      ];
      assert.deepEqual(readRecords(file(`crlf.${fmt}`, `\ufeff${rows.join('\r\n')}\r\n`)).records, want('\r\n'));
      // LF, no BOM, no line break after the last record
      assert.deepEqual(readRecords(file(`lf.${fmt}`, rows.join('\n').replace('\r\n', '\n'))).records, want('\n'));
    });

    it(`${fmt}: errors after records that span lines name the line where the bad record starts`, () => {
      const p = file(`lines.${fmt}`, [
        `text${d}label`, // 1
        `"one\nspanning\nthree lines"${d}a`, // 2-4
        `ok${d}b`, // 5
        `too${d}many${d}fields`, // 6
        `"never closed${d}c`, // 7: the quote runs to the end of the file
        `after${d}d`, // 8
        '',
      ].join('\n'));
      throwsAt(() => readRecords(p), p, 6, /has 3 fields, the header has 2/);
      const r = readRecords(p, { skipBadLines: true });
      assert.deepEqual(texts(r.records), ['one\nspanning\nthree lines', 'ok', 'after']);
      assert.equal(r.skipped, 2);
      assert.match(r.skippedReasons[0]!, /:6: has 3 fields/);
      assert.match(r.skippedReasons[1]!, /:7: unterminated quote/);
    });

    it(`${fmt}: an unterminated quote is a file:line error, or one skipped record`, () => {
      const p = file(`open.${fmt}`, `text${d}label\n"multi\nline"${d}x\n"never closed${d}y\nnext${d}z\nlast${d}w\n`);
      throwsAt(() => readRecords(p), p, 4, /unterminated quote.*pass --skip-bad-lines/);
      const r = readRecords(p, { skipBadLines: true });
      assert.equal(r.skipped, 1);
      assert.match(r.skippedReasons[0]!, new RegExp(`^${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:4: unterminated quote`));
      // reading goes on from the line after the one where the bad record starts
      assert.deepEqual(texts(r.records), ['multi\nline', 'next', 'last']);
    });
  }

  it('text after a closing quote, and a quote inside an unquoted field, are bad records (not guesses)', () => {
    const p = file('quotes.csv', 'text,label\n"bad"x,1\nok,2\n5\'10" tall,3\nfine,4\n');
    throwsAt(() => readRecords(p), p, 2, /text after the closing quote of a quoted field in column "text"/);
    const r = readRecords(p, { skipBadLines: true });
    assert.deepEqual(texts(r.records), ['ok', 'fine']);
    assert.equal(r.skipped, 2);
    assert.match(r.skippedReasons[1]!, /:4: a quote inside an unquoted field in column "text".*--no-quote/);
  });

  it('quote: false reads quotes as plain text, for TSV written without quoting', () => {
    const p = file('plain.tsv', 'text\tlabel\n"Hi" she said\tx\n"unbalanced\ty\nends with "\tz\n');
    assert.deepEqual(texts(readRecords(p, { quote: false }).records), ['"Hi" she said', '"unbalanced', 'ends with "']);
    throwsAt(() => readRecords(p), p, 2, /text after the closing quote/);
  });

  it('a malformed header stops reading even with skipBadLines', () => {
    const p = file('head.csv', '"text,label\nx,y\n');
    throwsAt(() => readRecords(p, { skipBadLines: true }), p, 1, /the header is malformed: unterminated quote/);
  });

  it('quoted fields and lines larger than the 1 MiB read window keep records and line numbers', () => {
    // 20,000 short records, then one quoted field of 600,000 lines (1.2 MB, so the first window
    // ends inside it and a second, doubled one is needed), then an unquoted 1.5 MB line
    const short = Array.from({ length: 20000 }, (_, i) => `short ${i},a`);
    const big = `"${'x\n'.repeat(600000)}end",b`;
    const long = `${'y'.repeat(1500000)},c`;
    const p = file('big.csv', ['text,label', ...short, big, long, 'a,b,c', 'fine,d', ''].join('\n'));
    const bigLine = 1 + short.length + 1; // the header, the short records, then the big one starts
    const badLine = bigLine + 600000 + 1 + 1; // the big record spans 600,001 lines, then the long line
    throwsAt(() => readRecords(p), p, badLine, /has 3 fields, the header has 2/);
    const r = readRecords(p, { skipBadLines: true });
    assert.equal(r.records.length, short.length + 3);
    assert.equal(r.skipped, 1);
    const t = texts(r.records);
    assert.equal(t[short.length - 1], 'short 19999');
    assert.equal(t[short.length], `${'x\n'.repeat(600000)}end`);
    assert.equal(t[short.length + 1]!.length, 1500000);
    assert.equal(t[short.length + 2], 'fine');
  });
});

describe('column roles', () => {
  it('an explicit column option wins over a header name', () => {
    const p = file('roles.csv', 'text,label\nhello,there\n');
    assert.deepEqual(readRecords(p).records, [{ kind: 'label', text: 'hello', label: 'there' }]);
    assert.deepEqual(readRecords(p, { completionColumn: 'label' }).records, [{ kind: 'completion', prompt: 'hello', completion: 'there' }]);
    assert.deepEqual(readRecords(p, { textColumn: 'label' }).records, [{ kind: 'text', text: 'there' }]);
    const q = file('roles.tsv', 'id\ttext\treview\tlabel\n1\tx\ty\tz\n');
    assert.deepEqual(readRecords(q, { textColumn: 'review' }).records, [{ kind: 'label', text: 'y', label: 'z' }]);
    assert.deepEqual(readRecords(q, { textColumn: '2', labelColumn: '0' }).records, [{ kind: 'label', text: 'y', label: '1' }]);
    assert.throws(() => readRecords(q, { textColumn: '4' }), /no text column 4 \(columns: id, text, review, label; indices count from 0\)/);
    assert.deepEqual(readRecords(file('pc.csv', 'prompt,completion\nQ,A\n')).records, [{ kind: 'completion', prompt: 'Q', completion: 'A' }]);
    assert.deepEqual(readRecords(file('nohead.csv', 'x,1\n'), { header: false, labelColumn: '1' }).records, [{ kind: 'label', text: 'x', label: '1' }]);
  });

  it('ambiguous header names fail naming the columns and the options that settle it', () => {
    const p = file('amb.csv', 'text,label,completion\nhi,a,b\n');
    assert.throws(() => readRecords(p), /columns "label" and "completion" could each be what is learned; choose with --label-column .* or --completion-column/);
    assert.deepEqual(readRecords(p, { labelColumn: 'label' }).records, [{ kind: 'label', text: 'hi', label: 'a' }]);
    assert.deepEqual(readRecords(p, { completionColumn: 'completion' }).records, [{ kind: 'completion', prompt: 'hi', completion: 'b' }]);
    const q = file('amb2.csv', 'text,sentence,label\nx,y,z\n');
    assert.throws(() => readRecords(q), /columns "text" and "sentence" could each hold the text; say which with --text-column/);
    assert.deepEqual(readRecords(q, { textColumn: 'sentence' }).records, [{ kind: 'label', text: 'y', label: 'z' }]);
    assert.throws(() => readRecords(p, { labelColumn: 'label', completionColumn: 'completion' }), /--label-column and --completion-column are both given/);
  });
});

describe('the shared datasets', () => {
  const root = join(dataDir(), 'datasets');
  interface Case {
    options: ReadOptions;
    count: number;
    labels?: Record<string, number>;
    check?: (rs: DataRecord[]) => void;
  }
  const labelRecords = (rs: DataRecord[]) => rs.map((r) => (r.kind === 'label' ? r : assert.fail(`a ${r.kind} record`)));
  // Counts and label counts from Python's csv module (an independent RFC 4180 reader), run once:
  //   python3 -c 'import csv,sys,collections; d="\t" if not sys.argv[1].endswith(".csv") else ",";
  //     r=list(csv.reader(open(sys.argv[1],encoding="utf-8",newline=""),delimiter=d,strict=True))[1:];
  //     print(len(r), collections.Counter(x[int(sys.argv[2])] for x in r))' FILE LABEL_INDEX
  // with quoting=csv.QUOTE_NONE for the SMS Spam Collection, whose quotes are plain text. Python's
  // records also equalled these, field by field. JSONL: the non-blank lines of each file.
  const cases: Record<string, Case> = {
    'ag_news_test/test.csv': { options: { textColumn: 'description' }, count: 7600, labels: { 1: 1900, 2: 1900, 3: 1900, 4: 1900 } },
    'banking77/train.tsv': {
      options: {},
      count: 9003,
      check: (rs) => {
        const l = labelRecords(rs);
        assert.equal(new Set(l.map((r) => r.label)).size, 77);
        // the quoted record at line 273 holds a line break
        assert.ok(l.some((r) => r.text === '\nHow do I unblock my PIN?' && r.label === 'pin_blocked'));
        assert.ok(l.some((r) => r.text === 'What do I do with my "decline" message on a transfer?'));
      },
    },
    'banking77/dev.tsv': {
      options: {},
      count: 1000,
      check: (rs) => {
        const l = labelRecords(rs);
        assert.equal(new Set(l.map((r) => r.label)).size, 77);
        // line 95: a quoted text with doubled quotes inside
        assert.ok(l.some((r) => r.text.startsWith('Hi, I had an issue with my card payment') && r.text.includes('saying "they did not receive my payment" then')));
      },
    },
    'banking77/test.tsv': { options: {}, count: 3080, check: (rs) => assert.ok(labelRecords(rs).some((r) => r.text === 'What do I do if an ATM "stole" my card?')) },
    'sst2/train.tsv': { options: {}, count: 67349, labels: { 0: 29780, 1: 37569 } },
    'sst2/dev.tsv': { options: {}, count: 872, labels: { 0: 428, 1: 444 } },
    'sst2/test.tsv': { options: {}, count: 1821 },
    'sms_spam/SMSSpamCollection': { options: { format: 'tsv', quote: false, textColumn: 'SMS', labelColumn: 'Label' }, count: 5574, labels: { ham: 4827, spam: 747 } },
    'gsm8k/train.jsonl': { options: {}, count: 7473, check: (rs) => assert.ok(rs.every((r) => r.kind === 'completion')) },
    'gsm8k/test.jsonl': { options: {}, count: 1319, check: (rs) => assert.ok(rs.every((r) => r.kind === 'completion')) },
  };

  it('covers every CSV, TSV and JSONL file there', () => {
    const walk = (d: string): string[] => readdirSync(d).flatMap((n) => (statSync(join(d, n)).isDirectory() ? walk(join(d, n)) : [relative(root, join(d, n))]));
    const data = walk(root).filter((f) => /\.(csv|tsv|jsonl)$/.test(f) || f.endsWith('SMSSpamCollection'));
    assert.deepEqual(data.sort(), Object.keys(cases).sort());
  });

  for (const [name, c] of Object.entries(cases)) {
    it(`${name} loads without skipBadLines`, () => {
      const r = readRecords(join(root, name), c.options);
      assert.equal(r.skipped, 0);
      assert.equal(r.records.length, c.count);
      if (c.labels) {
        const n: Record<string, number> = {};
        for (const rec of labelRecords(r.records)) n[rec.label] = (n[rec.label] ?? 0) + 1;
        assert.deepEqual(n, c.labels);
      }
      c.check?.(r.records);
    });
  }

  it('the SMS Spam Collection read with quoting on fails at its first plain-text quote, pointing to --no-quote', () => {
    const p = join(root, 'sms_spam', 'SMSSpamCollection');
    throwsAt(() => readRecords(p, { format: 'tsv', textColumn: 'SMS', labelColumn: 'Label' }), p, 55, /a quote inside an unquoted field in column "SMS".*--no-quote/);
  });
});
