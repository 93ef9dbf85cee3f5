// @rtsub/client — see docs/client.md
export { RtsubClient, createClient } from './client.js';
export { Subscription } from './view.js';
export { Engine } from './engine.js';
export { RowSet } from './rowset.js';
export { WriteQueue, PRIORITIES } from './writes.js';
export { MemoryStore, IndexedDbStore } from './store.js';
export { SseParser } from './transport.js';
export { compareEventIds, parseEventId, maxEventId } from './eventid.js';
export { backoffDelay, subscriptionKey, canonicalJson } from './util.js';
