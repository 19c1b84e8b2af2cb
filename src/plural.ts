/**
 * English plurals for messages that state a count: `2 things need attention`, `1 value`,
 * never `thing(s)` when the number is known.
 */

/** `value` for 1, `values` otherwise (or the given plural: `copies`). */
export function noun(n: number, singular: string, plural = `${singular}s`): string {
  return n === 1 ? singular : plural;
}

/** `1 value`, `2 values`; `format` renders the number (default: as is). */
export function count(n: number, singular: string, plural = `${singular}s`, format: (n: number) => string = String): string {
  return `${format(n)} ${noun(n, singular, plural)}`;
}

/** The verb agreeing with a count: `is`/`are`, `needs`/`need`, `does`/`do`. */
export function verb(n: number, singular: string, plural: string): string {
  return n === 1 ? singular : plural;
}
