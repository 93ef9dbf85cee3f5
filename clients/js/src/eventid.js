// Event ids: "<commit lsn>:<position>", e.g. "0/1A2B3C8:3" (docs/protocol.md,
// "Event ids"). Compared by LSN as a 64-bit number, then by position.

/** Parses an event id into [lsn as BigInt, position]; null if malformed. */
export function parseEventId(id) {
  if (typeof id !== 'string') return null;
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8}):(\d+)$/.exec(id);
  if (!m) return null;
  return [(BigInt('0x' + m[1]) << 32n) | BigInt('0x' + m[2]), Number(m[3])];
}

/** <0, 0, >0 as a is before, equal to, after b. A missing id sorts first. */
export function compareEventIds(a, b) {
  const x = parseEventId(a);
  const y = parseEventId(b);
  if (!x || !y) return (x ? 1 : 0) - (y ? 1 : 0);
  if (x[0] !== y[0]) return x[0] < y[0] ? -1 : 1;
  return x[1] - y[1];
}

/** The later of two event ids (either may be null). */
export function maxEventId(a, b) {
  if (a == null) return b ?? null;
  if (b == null) return a;
  return compareEventIds(a, b) >= 0 ? a : b;
}
