// RowSet: the rows of one subscription by primary key, each with the event
// id of the change that last touched it (its version metadata).
//
// The key of a row is its key columns' values (option `key`, default
// ['id']), as a canonical JSON array string. On update and delete the
// server sends the old key (or, with REPLICA IDENTITY FULL, the old row)
// in `old`: the key of the row being replaced or removed is taken from
// `old` when it holds every key column, else from `row`.

import { canonicalJson } from './util.js';

export class RowSet {
  constructor(keyCols = ['id']) {
    this.keyCols = keyCols;
    /** key -> { row, event } */
    this.map = new Map();
  }

  keyOf(row) {
    if (!row) return null;
    const vals = [];
    for (const c of this.keyCols) {
      if (!(c in row)) return null;
      vals.push(row[c]);
    }
    return canonicalJson(vals);
  }

  get size() { return this.map.size; }
  get(key) { return this.map.get(key)?.row; }
  entries() { return this.map.entries(); }

  /**
   * Applies one server change ({op, row, old, event}); returns the
   * normalized operation for views — {op, key, prevKey, row, event} — or
   * null when it changes nothing here.
   */
  applyChange(ch) {
    const newKey = this.keyOf(ch.row);
    const oldKey = this.keyOf(ch.old) ?? newKey;
    if (ch.op === 'delete') {
      const k = oldKey ?? newKey;
      if (k == null || !this.map.has(k)) return null;
      const prev = this.map.get(k).row;
      this.map.delete(k);
      return { op: 'delete', key: k, row: prev, event: ch.event };
    }
    if (newKey == null) return null;         // the key columns are not in the row
    if (ch.op === 'update' && oldKey !== newKey && this.map.has(oldKey)) {
      const prev = this.map.get(oldKey).row;
      this.map.delete(oldKey);
      this.map.set(newKey, { row: ch.row, event: ch.event });
      return { op: 'update', key: newKey, prevKey: oldKey, row: ch.row, old: prev, event: ch.event };
    }
    const had = this.map.get(newKey);
    this.map.set(newKey, { row: ch.row, event: ch.event });
    return had
      ? { op: 'update', key: newKey, row: ch.row, old: had.row, event: ch.event }
      : { op: 'insert', key: newKey, row: ch.row, event: ch.event };
  }

  /** Applies a normalized operation (as applyChange returns). */
  applyOp(op) {
    if (op.op === 'delete') { this.map.delete(op.key); return; }
    if (op.prevKey != null) this.map.delete(op.prevKey);
    this.map.set(op.key, { row: op.row, event: op.event ?? null });
  }

  /**
   * Replaces the content by `next` (key -> {row, event}); returns the
   * operations that turn the old content into the new one.
   */
  replace(next) {
    const ops = [];
    for (const [k, e] of this.map) {
      if (!next.has(k)) ops.push({ op: 'delete', key: k, row: e.row, event: null });
    }
    for (const [k, e] of next) {
      const had = this.map.get(k);
      if (!had) ops.push({ op: 'insert', key: k, row: e.row, event: e.event });
      else if (canonicalJson(had.row) !== canonicalJson(e.row))
        ops.push({ op: 'update', key: k, row: e.row, old: had.row, event: e.event });
      else if (e.event == null) next.set(k, had);   // unchanged: keep its version
    }
    this.map = next;
    return ops;
  }

  /** [[key, row, event], ...] for transfer or storage. */
  dump() {
    return [...this.map].map(([k, e]) => [k, e.row, e.event]);
  }

  static fromDump(keyCols, dump) {
    const rs = new RowSet(keyCols);
    for (const [k, row, event] of dump ?? []) rs.map.set(k, { row, event });
    return rs;
  }
}
