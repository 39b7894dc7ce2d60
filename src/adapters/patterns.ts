/**
 * Module-path patterns from adapter configs (target_modules, exclude_modules, rank_pattern keys,
 * layers_pattern). Configs are untrusted input, so patterns run on RE2 (re2js): matching is
 * linear in the path length whatever the pattern, and look-arounds and back-references, which
 * need backtracking, are refused with an error naming the field.
 */
import { RE2JS } from 're2js';
import { AdaptkitError } from '../tensor/index.js';

/** Longer patterns are refused: nothing a config needs comes close. */
export const MAX_PATTERN_LENGTH = 1000;

const cache = new Map<string, RE2JS>();

export function compilePattern(re: string, field: string): RE2JS {
  let c = cache.get(re);
  if (c) return c;
  if (re.length > MAX_PATTERN_LENGTH) throw new AdaptkitError(`"${field}": a pattern of ${re.length} characters is longer than the ${MAX_PATTERN_LENGTH} allowed`);
  try {
    c = RE2JS.compile(re);
  } catch (e) {
    throw new AdaptkitError(`"${field}": invalid pattern ${JSON.stringify(re.length > 80 ? `${re.slice(0, 80)}...` : re)} (${(e as Error).message}; patterns use RE2 syntax, without look-arounds or back-references)`);
  }
  if (cache.size > 4096) cache.clear();
  cache.set(re, c);
  return c;
}

/** Whether the whole of `s` matches `re`. */
export function fullMatch(re: string, s: string, field: string): boolean {
  return compilePattern(re, field).matches(s);
}

/** The first match of `re` anywhere in `s`, with its groups, or null. */
export function search(re: string, s: string, field: string): string[] | null {
  const m = compilePattern(re, field).matcher(s);
  if (!m.find()) return null;
  const out: string[] = [];
  for (let g = 0; g <= m.groupCount(); g++) out.push(m.group(g) ?? '');
  return out;
}

/** A literal string as a pattern. */
export function escapePattern(s: string): string {
  return RE2JS.quote(s);
}
