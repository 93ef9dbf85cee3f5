// Type declarations of @rtsub/client (hand-written; see docs/client.md).

export type Row = Record<string, unknown>;
export type Priority = 'critical' | 'high' | 'normal' | 'low';
export type SyncStatus = 'synced' | 'pending' | 'conflict';
export type ConnectionStatus = 'idle' | 'connecting' | 'open' | 'offline' | 'closed';
export type Phase = 'idle' | 'subscribing' | 'snapshot' | 'catchup' | 'live' | 'disconnected' | 'failed';
export type ConflictPolicy = 'lww' | 'merge' | 'manual';

/** A persistence backend (IndexedDbStore in browsers, MemoryStore elsewhere). */
export interface Store {
  getSubscription(key: string): Promise<SavedSubscription | null>;
  putSubscription(key: string, value: SavedSubscription): Promise<void>;
  deleteSubscription(key: string): Promise<void>;
  getWrites(): Promise<QueuedWrite[]>;
  putWrite(w: QueuedWrite): Promise<void>;
  deleteWrite(id: string): Promise<void>;
  close?(): void;
}

export interface SavedSubscription {
  key: string;
  name: string;
  params: Row;
  keyCols: string[];
  /** [key, row, version event id] */
  rows: Array<[string, Row, string | null]>;
  last: string | null;
  epoch: string | null;
  resumable: boolean;
  savedAt?: number;
}

/** What the application's write function receives. */
export interface Mutation {
  id: string;
  op: 'insert' | 'update' | 'delete' | string;
  subscription: string | null;
  params: Row | null;
  /** the row key as canonical JSON of the key columns' values, e.g. '[3]' */
  key: string | null;
  /** the key columns' values, e.g. [3] */
  keyValues: unknown[] | null;
  row: Row | null;
  patch: Row | null;
  /** the server's row when the write was made */
  base: Row | null;
  baseVersion: string | null;
  priority: Priority;
  /** how many times it failed before */
  attempt: number;
  data?: unknown;
}

export interface QueuedWrite {
  id: string;
  seq: number;
  priority: Priority;
  op: string;
  subKey: string | null;
  key: string | null;
  row: Row | null;
  patch: Row | null;
  base: Row | null;
  baseVersion: string | null;
  policy: ConflictPolicy;
  status: 'pending' | 'inflight' | 'conflict' | 'written' | 'dropped';
  attempts: number;
  notBefore: number;
  lastError: string | null;
  owner: string;
  createdAt: number;
}

export interface WriteOutcome {
  status: 'written' | 'dropped';
  result?: unknown;
  conflict?: boolean;
}

/** A promise of the write's outcome, with the write's id (for resolveConflict). */
export type WritePromise = Promise<WriteOutcome> & { id: string };

export interface ConflictInfo {
  /** the write's patch (update) or row (insert) */
  local: Row | null;
  /** the server's row when the write was made */
  base: Row | null;
  /** the server's row now (null: deleted) */
  server: Row | null;
  write: Mutation;
  op: string;
}

/** Return the patch to send, null to drop the write, undefined to park it as a conflict. */
export type ConflictHandler = (info: ConflictInfo) => Row | null | undefined | Promise<Row | null | undefined>;

export interface ClientOptions {
  /** the rtsub server, e.g. 'https://rt.example.com' (ws:// and wss:// work too) */
  url: string;
  /** a JWT, or a function returning one (called on every connect and before expiry) */
  token: string | (() => string | Promise<string>);
  /** 'websocket' (default) or 'sse' (one stream per subscription, receive only) */
  transport?: 'websocket' | 'sse';
  /** WebSocket subprotocol: 'json' (default) or 'msgpack' */
  format?: 'json' | 'msgpack';
  /** the application's write function (writes through views and client.write) */
  write?: (m: Mutation) => unknown | Promise<unknown>;
  /** share one connection among the tabs of this origin (default: true in browsers with Web Locks) */
  shared?: boolean;
  /** name of the tab group sharing a connection (default: url, transport and format); use one per user */
  channel?: string;
  /** persistence: a Store; default IndexedDB (database `database`) in browsers, memory elsewhere */
  store?: Store;
  persist?: boolean;
  database?: string;
  /** WebSocket class (default: globalThis.WebSocket, else the `ws` package) */
  WebSocket?: unknown;
  fetch?: typeof fetch;
  /** reconnect backoff (ms): base 250, max 30000 */
  backoff?: { base?: number; max?: number };
  /** write retry backoff (ms): base 500, max 30000 */
  writeBackoff?: { base?: number; max?: number };
  /** refresh the token this long before it expires (default: at half its remaining life, at most 60 s before) */
  refreshMarginMs?: number;
  /** extra fields of every subscribe message: chunkRows, chunkBytes, batchSize, throttleMs, includeMetadata, priority */
  subscribeOptions?: Record<string, unknown>;
  /** how long a written row stays pending waiting for the server's change (default 3000 ms) */
  settleMs?: number;
}

export interface ChangeMeta {
  /** the row key (canonical JSON of the key columns' values) */
  key: string;
  /** 'server' (a change or a snapshot), 'state' (rows handed over by the leader tab), 'cache' (persisted rows), 'local' (a queued write) */
  source: 'server' | 'state' | 'cache' | 'local';
  /** the event id of the change */
  event?: string | null;
  /** update: the row before */
  old?: Row;
  write?: string;
}

export interface SubscribeOptions<R extends Row = Row> {
  /** the primary key columns (default ['id']) */
  key?: string[];
  /** order of rows(): column names ('-col' descending) or a compare function (default: the key) */
  orderBy?: string | string[] | ((a: R, b: R) => number);
  /** the version column for conflict detection (default: the event id of the row's last change) */
  version?: string;
  conflict?: ConflictPolicy;
  onConflict?: ConflictHandler;
  onInsert?: (row: R, meta: ChangeMeta) => void;
  onUpdate?: (row: R, meta: ChangeMeta & { old: R }) => void;
  onDelete?: (row: R, meta: ChangeMeta) => void;
  /** complete and up to date (snapshot complete, or caught up after a resume) */
  onLive?: (info: { at: string | null; last: string | null; epoch: string | null }) => void;
  onReset?: (reason: string) => void;
  onError?: (e: { code: string; message: string }) => void;
  onStatus?: (status: SyncStatus) => void;
  onRowStatus?: (e: { key: string; status: SyncStatus; row: R | null }) => void;
  /** after any batch of changes */
  onChange?: (sub: Subscription<R>) => void;
  onCache?: (info: { rows: number; last: string | null; savedAt?: number }) => void;
  onMessage?: (m: { event: string; prefix: string; content: unknown }) => void;
}

export interface WriteOptions {
  priority?: Priority;
  conflict?: ConflictPolicy;
  data?: unknown;
}

export declare class Subscription<R extends Row = Row> {
  readonly name: string;
  readonly params: Row;
  readonly key: string;
  readonly keyCols: string[];
  /** the last event id received (the resume point) */
  readonly last: string | null;
  readonly epoch: string | null;
  readonly live: boolean;
  readonly phase: Phase;
  /** showing persisted rows, not yet confirmed by the server */
  readonly fromCache: boolean;
  /** resolves at the first live; rejects (with .code) when the server refuses the subscription */
  readonly ready: Promise<Subscription<R>>;
  readonly status: SyncStatus;
  readonly size: number;
  rows(): R[];
  get(keyOrRow: unknown): R | null;
  keyOf(keyOrRow: unknown): string;
  rowStatus(keyOrRow: unknown): SyncStatus;
  serverRow(key: string): R | null;
  serverVersion(key: string): string | null;
  insert(row: R, opts?: WriteOptions): WritePromise;
  update(keyOrRow: unknown, patch: Partial<R>, opts?: WriteOptions): WritePromise;
  delete(keyOrRow: unknown, opts?: WriteOptions): WritePromise;
  resolveConflict(id: string, value: Row | null): boolean;
  pendingWrites(): QueuedWrite[];
  unsubscribe(): void;
  on(event: 'insert' | 'update' | 'delete', fn: (row: R, meta: ChangeMeta) => void): () => void;
  on(event: 'live', fn: (info: { at: string | null; last: string | null; epoch: string | null }) => void): () => void;
  on(event: 'status', fn: (status: SyncStatus) => void): () => void;
  on(event: 'rowstatus', fn: (e: { key: string; status: SyncStatus; row: R | null }) => void): () => void;
  on(event: string, fn: (...args: any[]) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
  once(event: string, fn: (...args: any[]) => void): () => void;
}

export interface ClientInfo {
  tabId: string;
  isLeader: boolean;
  leaderId: string | null;
  shared: boolean;
  status: ConnectionStatus;
  online: boolean;
  /** leader only: the server subscriptions open */
  serverSubscriptions: number | null;
  stats: { connects: number; welcomes: number; messages: number; resumed: number; snapshots: number; resets: number; duplicates: number } | null;
  queued: number;
}

export declare class RtsubClient {
  constructor(options: ClientOptions);
  readonly status: ConnectionStatus;
  readonly isLeader: boolean;
  readonly online: boolean;
  readonly writes: WriteQueue;
  subscribe<R extends Row = Row>(name: string, params?: Row, options?: SubscribeOptions<R>): Subscription<R>;
  /** a write not tied to a view's row; the write function receives it */
  write(m: { op?: string; row?: Row; patch?: Row; data?: unknown; priority?: Priority }): WritePromise;
  resolveConflict(id: string, value: Row | null): boolean;
  /** tell the client whether the network is up (browsers: automatic) */
  setOnline(online: boolean): void;
  /** drop the connection once (it reconnects and resumes) */
  reconnect(): void;
  info(): ClientInfo;
  close(): void;
  on(event: 'status', fn: (s: ConnectionStatus) => void): () => void;
  on(event: 'leader' | 'leaderchange' | 'online' | 'offline', fn: (...args: any[]) => void): () => void;
  on(event: 'conflict', fn: (w: QueuedWrite, info: ConflictInfo) => void): () => void;
  on(event: 'error', fn: (e: { code: string; message?: string }) => void): () => void;
  on(event: string, fn: (...args: any[]) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
}

export declare function createClient(options: ClientOptions): RtsubClient;

export declare class WriteQueue {
  readonly size: number;
  list(): QueuedWrite[];
  resolve(id: string, value: Row | null): boolean;
  setOnline(online: boolean): void;
}
export declare const PRIORITIES: Priority[];

export declare class MemoryStore implements Store {
  getSubscription(key: string): Promise<SavedSubscription | null>;
  putSubscription(key: string, value: SavedSubscription): Promise<void>;
  deleteSubscription(key: string): Promise<void>;
  getWrites(): Promise<QueuedWrite[]>;
  putWrite(w: QueuedWrite): Promise<void>;
  deleteWrite(id: string): Promise<void>;
}
export declare class IndexedDbStore extends MemoryStore {
  constructor(name?: string, indexedDB?: unknown);
}

export declare class RowSet {
  constructor(keyCols?: string[]);
  keyOf(row: Row): string | null;
  readonly size: number;
  get(key: string): Row | undefined;
}
export declare class Engine {}
export declare class SseParser {
  constructor(onEvent: (e: { event: string; data: string; id: string | null }) => void);
  push(text: string): void;
}

export declare function compareEventIds(a: string | null, b: string | null): number;
export declare function parseEventId(id: string): [bigint, number] | null;
export declare function maxEventId(a: string | null, b: string | null): string | null;
export declare function backoffDelay(attempt: number, opts?: { base?: number; max?: number; random?: () => number }): number;
export declare function subscriptionKey(name: string, params?: Row): string;
export declare function canonicalJson(v: unknown): string;
