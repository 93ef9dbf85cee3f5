// Transports: a WebSocket (subprotocol rtsub.v1.json or rtsub.v1.msgpack)
// carrying every subscription of a connection, or one Server-Sent Events
// stream (read with fetch, so that Last-Event-ID can be sent on the first
// request too) per subscription.

let msgpack = null;
async function loadMsgpack() {
  if (!msgpack) msgpack = await import('@msgpack/msgpack');
  return msgpack;
}

/** The WebSocket class: the given one, the global one, or the `ws` package. */
export async function resolveWebSocket(given) {
  if (given) return given;
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  try {
    const m = await import('ws');
    return m.WebSocket ?? m.default;
  } catch {
    throw new Error('rtsub: no WebSocket implementation: install the `ws` package or pass options.WebSocket');
  }
}

/** http(s) and ws(s) forms of the server's base URL (no trailing slash). */
export function baseUrls(url) {
  const u = String(url).replace(/\/+$/, '');
  const http = u.replace(/^ws(s?):/, 'http$1:');
  const ws = http.replace(/^http(s?):/, 'ws$1:');
  return { http, ws };
}

export class WsTransport {
  /**
   * opts: url (ws base), format ('json' | 'msgpack'), WebSocket (class),
   * onOpen(), onMessage(msg), onClose({code, reason})
   */
  constructor(opts) {
    this.opts = opts;
    this.ws = null;
    this.closed = false;
    this.codec = null;
  }

  async open() {
    const { url, format, WebSocket } = this.opts;
    if (format === 'msgpack') {
      const m = await loadMsgpack();
      this.codec = { encode: (o) => m.encode(o), decode: (d) => m.decode(d instanceof ArrayBuffer ? new Uint8Array(d) : d) };
    } else {
      this.codec = { encode: (o) => JSON.stringify(o), decode: (d) => JSON.parse(typeof d === 'string' ? d : new TextDecoder().decode(d)) };
    }
    if (this.closed) return;
    const ws = new WebSocket(`${url}/v1/ws`, `rtsub.v1.${format}`);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.addEventListener('open', () => { if (!this.closed) this.opts.onOpen(); });
    ws.addEventListener('message', (ev) => {
      if (this.closed) return;
      let msg;
      try { msg = this.codec.decode(ev.data); } catch (e) { return; }
      this.opts.onMessage(msg);
    });
    ws.addEventListener('close', (ev) => this._closed(ev.code, ev.reason));
    ws.addEventListener('error', () => { /* a close event follows */ });
  }

  _closed(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this.opts.onClose({ code, reason });
  }

  send(msg) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(this.codec.encode(msg));
  }

  /** Closes; onClose is called at once (not when the socket finally closes). */
  close(code = 1000, reason = '') {
    const ws = this.ws;
    this._closed(code, reason);
    try { ws?.close(code, reason); } catch { /* not open yet */ }
  }
}

/** Parses a text/event-stream body: calls onEvent({event, data, id}). */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buf = '';
    this.reset();
  }
  reset() { this.event = ''; this.data = []; this.id = null; }
  push(text) {
    this.buf += text;
    let i;
    while ((i = this.buf.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buf.slice(0, i);
      const nl = this.buf[i] === '\r' && this.buf[i + 1] === '\n' ? 2 : 1;
      if (this.buf[i] === '\r' && i + 1 === this.buf.length) break;   // maybe \r\n split
      this.buf = this.buf.slice(i + nl);
      this.line(line);
    }
  }
  line(line) {
    if (line === '') {
      if (this.data.length) this.onEvent({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
      this.reset();
      return;
    }
    if (line[0] === ':') return;                   // comment (heartbeat)
    const c = line.indexOf(':');
    const field = c < 0 ? line : line.slice(0, c);
    let value = c < 0 ? '' : line.slice(c + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id') this.id = value;
  }
}

export class SseTransport {
  /**
   * One stream: opts: url (http base), subscription, params, token,
   * lastEventId ("<event id>@<epoch>" or null), query (extra parameters),
   * fetch, onMessage(msg), onClose({code, reason, status})
   */
  constructor(opts) {
    this.opts = opts;
    this.closed = false;
    this.abort = new AbortController();
  }

  async open() {
    const o = this.opts;
    const q = new URLSearchParams({ subscription: o.subscription, params: JSON.stringify(o.params ?? {}) });
    for (const [k, v] of Object.entries(o.query ?? {})) q.set(k, String(v));
    if (o.token) q.set('access_token', o.token);
    const headers = { Accept: 'text/event-stream' };
    if (o.lastEventId) headers['Last-Event-ID'] = o.lastEventId;
    const f = o.fetch ?? globalThis.fetch;
    let res;
    try {
      res = await f(`${o.url}/v1/sse?${q}`, { headers, signal: this.abort.signal, cache: 'no-store' });
    } catch (e) {
      this._closed({ code: 0, reason: String(e?.message ?? e) });
      return;
    }
    if (!res.ok) {
      let code = `http_${res.status}`;
      let message = '';
      try { const b = await res.json(); code = b.error?.code ?? code; message = b.error?.message ?? ''; } catch { /* no body */ }
      this._closed({ code: res.status, reason: code, message, status: res.status });
      return;
    }
    const parser = new SseParser((ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (!this.closed) o.onMessage(msg, ev.id);
    });
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(dec.decode(value, { stream: true }));
      }
      this._closed({ code: 1000, reason: 'stream_ended' });
    } catch (e) {
      this._closed({ code: 0, reason: String(e?.message ?? e) });
    }
  }

  _closed(info) {
    if (this.closed) return;
    this.closed = true;
    this.opts.onClose(info);
  }

  close() {
    this._closed({ code: 1000, reason: 'closed' });
    this.abort.abort();
  }
}
