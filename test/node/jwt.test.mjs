// jwt.test.mjs — JWT verification of the rtsub server (src/auth_jwt.c) and
// its rtsub.* settings (src/config.c), through rtsub.verify_token().
//
// Tokens are minted with `jose` (HS256/384/512, RS256, ES256 with generated
// keys, and hand-made attacks); every rejection asserts SQLSTATE 28000 and
// the exact stable error code in the error detail ("Code <code>: ...").
// Run by test/run (node suite) with PGHOST/PGPORT/PGUSER/PGDATABASE set.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import * as jose from 'jose';
import pg from 'pg';

const DB = 'rtsub_jwt_test';
const SECRET = 'rtsub-test-secret-0123456789abcdef-0123456789';
const SECRET_KEY = new TextEncoder().encode(SECRET);
const enc = new TextEncoder();

// the JWT settings every verification starts from
const BASE = {
  'rtsub.jwt_secret': SECRET,
  'rtsub.jwt_secret_base64': 'off',
  'rtsub.jwt_public_key_file': '',
  'rtsub.jwt_algorithms': 'HS256',
  'rtsub.jwt_audience': '',
  'rtsub.jwt_issuer': '',
  'rtsub.jwt_leeway': '30',
  'rtsub.jwt_role_claim': 'role',
};

let admin;    // connection to PGDATABASE
let db;       // connection to the test database
let tmpdir;   // key files, readable by the server
let notices = [];

const now = () => Math.floor(Date.now() / 1000);
const b64url = (s) => Buffer.from(s).toString('base64url');

// an HS256 token with CLAIMS (exp in an hour and role unless given)
async function hs(claims = {}, { alg = 'HS256', key = SECRET_KEY, header = {} } = {}) {
  return new jose.SignJWT({ role: 'authenticated', exp: now() + 3600, ...claims })
    .setProtectedHeader({ alg, ...header })
    .sign(key);
}

// a token signed over a raw PAYLOAD string (any bytes, even invalid claims)
async function rawSigned(payload, { alg = 'HS256', key = SECRET_KEY, header = {} } = {}) {
  return new jose.CompactSign(typeof payload === 'string' ? enc.encode(payload) : payload)
    .setProtectedHeader({ alg, ...header })
    .sign(key);
}

// write a PEM file the server can read; returns its path
function keyFile(name, pem) {
  const file = path.join(tmpdir, name);
  fs.writeFileSync(file, pem, { mode: 0o644 });
  return file;
}

// verify TOKEN with BASE + SETTINGS: { claims } or { error }
async function verify(token, settings = {}) {
  const all = { ...BASE, ...settings };
  await db.query('SELECT set_config(k, v, false) FROM unnest($1::text[], $2::text[]) AS t(k, v)',
    [Object.keys(all), Object.values(all)]);
  notices = [];
  try {
    const r = await db.query('SELECT rtsub.verify_token($1) AS claims', [token]);
    return { claims: r.rows[0].claims };
  } catch (error) {
    return { error };
  }
}

// assert that TOKEN is accepted; returns the claims
async function accepts(token, settings = {}) {
  const r = await verify(token, settings);
  assert.equal(r.error, undefined, r.error && `${r.error.message} / ${r.error.detail}`);
  return r.claims;
}

// assert that TOKEN is rejected with error code CODE
async function rejects(token, code, settings = {}) {
  const r = await verify(token, settings);
  assert.ok(r.error, `token accepted, expected ${code}`);
  assert.equal(r.error.code, '28000', `${r.error.message}`);
  assert.match(r.error.message, /^invalid token: /);
  const m = /^Code ([a-z_]+): /.exec(r.error.detail ?? '');
  assert.ok(m, `no code in detail: ${r.error.detail}`);
  assert.equal(m[1], code, `${r.error.message} / ${r.error.detail}`);
  return r.error;
}

before(async () => {
  // the first writable of these; the server runs as the same OS user
  for (const dir of [process.env.RTSUB_TEST_TMP, os.tmpdir(), process.env.HOME, process.cwd()]) {
    if (!dir) continue;
    try {
      tmpdir = fs.mkdtempSync(path.join(dir, 'rtsub-jwt-'));
      break;
    } catch { /* not writable: try the next */ }
  }
  assert.ok(tmpdir, 'no writable directory for key files');
  fs.chmodSync(tmpdir, 0o755);
  admin = new pg.Client();
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${DB}`);
  db = new pg.Client({ database: DB });
  db.on('notice', (n) => notices.push(n));
  await db.connect();
  await db.query('CREATE EXTENSION rtsub');
});

after(async () => {
  await db?.end();
  if (admin) {
    await admin.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
    await admin.end();
  }
  if (tmpdir)
    fs.rmSync(tmpdir, { recursive: true, force: true });
});

describe('settings', () => {
  test('every rtsub setting exists with its default, unit and context', async () => {
    const expected = {
      'rtsub.allowed_origins': ['', null, 'sighup'],
      'rtsub.audit_log': ['off', null, 'sighup'],
      'rtsub.database': ['postgres', null, 'postmaster'],
      'rtsub.heartbeat_interval': ['25000', 'ms', 'sighup'],
      'rtsub.jwt_algorithms': ['HS256', null, 'superuser'],
      'rtsub.jwt_audience': ['', null, 'superuser'],
      'rtsub.jwt_issuer': ['', null, 'superuser'],
      'rtsub.jwt_leeway': ['30', 's', 'superuser'],
      'rtsub.jwt_public_key_file': ['', null, 'superuser'],
      'rtsub.jwt_role_claim': ['role', null, 'superuser'],
      // rtsub.jwt_secret: GUC_NO_SHOW_ALL keeps it out of pg_settings
      'rtsub.jwt_secret_base64': ['off', null, 'superuser'],
      'rtsub.listen_address': ['localhost', null, 'postmaster'],
      'rtsub.max_connections': ['10000', null, 'sighup'],
      'rtsub.max_message_size': ['1048576', 'B', 'sighup'],
      'rtsub.max_messages_per_second': ['100', null, 'sighup'],
      'rtsub.max_send_buffer': ['16777216', 'B', 'sighup'],
      'rtsub.max_subscriptions_per_connection': ['100', null, 'sighup'],
      'rtsub.port': ['8710', null, 'postmaster'],
      'rtsub.slot_name': ['rtsub', null, 'postmaster'],
    };
    // boot_val: the test cluster may configure some (rtsub.port)
    const r = await db.query(`SELECT name, boot_val, unit, context FROM pg_settings
                               WHERE name = ANY ($1) ORDER BY name`, [Object.keys(expected)]);
    const got = Object.fromEntries(r.rows.map((x) => [x.name, [x.boot_val, x.unit, x.context]]));
    assert.deepEqual(got, expected);
    const s = await db.query("SELECT current_setting('rtsub.max_send_buffer') AS v");
    assert.equal(s.rows[0].v, '16MB');
  });

  test('rtsub.jwt_algorithms accepts the supported list and rejects none and unknown names', async () => {
    await db.query("SET rtsub.jwt_algorithms = 'HS256, hs384,HS512,RS256,ES256'");
    for (const bad of ['none', 'HS256,none', 'HS256,RS384', 'PS256', '', 'HS256,,RS256']) {
      await assert.rejects(db.query(`SET rtsub.jwt_algorithms = '${bad}'`),
        (e) => e.code === '22023' && /invalid value for parameter "rtsub.jwt_algorithms"/.test(e.message),
        bad);
    }
    await db.query('RESET rtsub.jwt_algorithms');
  });

  test('other check hooks and bounds', async () => {
    await db.query("SET rtsub.jwt_leeway = '2min'");
    assert.equal((await db.query("SELECT current_setting('rtsub.jwt_leeway') AS v")).rows[0].v, '2min');
    await assert.rejects(db.query("SET rtsub.jwt_leeway = '2h'"), { code: '22023' });
    await assert.rejects(db.query("SET rtsub.jwt_role_claim = ''"), { code: '22023' });
    await assert.rejects(db.query("SET rtsub.port = 1"), { code: '55P02' });
    await assert.rejects(db.query("SET rtsub.max_connections = 5"), { code: '55P02' });
    await db.query('RESET ALL');
  });

  test('rtsub.jwt_secret is hidden from and protected against non-superusers', async () => {
    await db.query("SET rtsub.jwt_secret = 'visible-to-superusers'");
    assert.equal((await db.query('SHOW rtsub.jwt_secret')).rows[0]['rtsub.jwt_secret'], 'visible-to-superusers');
    await db.query('DROP ROLE IF EXISTS rtsub_jwt_test_user');
    await db.query('CREATE ROLE rtsub_jwt_test_user');
    await db.query('SET ROLE rtsub_jwt_test_user');
    try {
      await assert.rejects(db.query('SHOW rtsub.jwt_secret'), { code: '42501' });
      await assert.rejects(db.query("SELECT current_setting('rtsub.jwt_secret')"), { code: '42501' });
      const r = await db.query("SELECT count(*)::int AS n FROM pg_settings WHERE name = 'rtsub.jwt_secret'");
      assert.equal(r.rows[0].n, 0);
      const all = await db.query('SHOW ALL');
      assert.ok(!all.rows.some((x) => x.name === 'rtsub.jwt_secret'));
      await assert.rejects(db.query("SET rtsub.jwt_secret = 'forged'"), { code: '42501' });
      await assert.rejects(db.query("SET rtsub.jwt_algorithms = 'HS512'"), { code: '42501' });
      await assert.rejects(db.query("SELECT rtsub.verify_token('x')"), { code: '42501' });
    } finally {
      await db.query('RESET ROLE');
      await db.query('DROP ROLE rtsub_jwt_test_user');
      await db.query('RESET ALL');
    }
  });
});

describe('algorithms and keys', () => {
  test('HS256, HS384 and HS512 tokens verify and return their claims', async () => {
    for (const alg of ['HS256', 'HS384', 'HS512']) {
      const exp = now() + 600;
      const token = await hs({ sub: 'alice', org_id: 7, exp, tags: ['a', 'b'] }, { alg });
      const claims = await accepts(token, { 'rtsub.jwt_algorithms': 'HS256,HS384,HS512' });
      assert.deepEqual(claims, { role: 'authenticated', sub: 'alice', org_id: 7, exp, tags: ['a', 'b'] });
    }
  });

  test('claims are returned exactly as signed (numbers, unicode)', async () => {
    const token = await rawSigned(`{"role":"a","exp":${now() + 60},"x":0.1,"big":9007199254740993,`
      + `"name":"Zo\u00eb ✓ 😀","nested":{"a":[1,{"b":null}]}}`);
    const claims = await accepts(token);
    assert.equal(claims.x, 0.1);
    assert.equal(claims.name, 'Zoë ✓ 😀');
    assert.deepEqual(claims.nested, { a: [1, { b: null }] });
    const text = await db.query('SELECT (rtsub.verify_token($1) ->> \'big\') AS big', [token]);
    assert.equal(text.rows[0].big, '9007199254740993');
    // libjwt's JSON parser (jansson) refuses integers beyond 64 bits: such a
    // token cannot be verified (reported as a bad signature, as libjwt does
    // not say which check failed)
    await rejects(await rawSigned(`{"role":"a","exp":${now() + 60},"big":123456789012345678901234567890}`),
      'token_bad_signature');
  });

  test('the secret may be base64 (standard or URL-safe)', async () => {
    const raw = crypto.randomBytes(48);
    const token = await hs({}, { key: raw });
    await accepts(token, { 'rtsub.jwt_secret': raw.toString('base64'), 'rtsub.jwt_secret_base64': 'on' });
    await accepts(token, { 'rtsub.jwt_secret': raw.toString('base64url'), 'rtsub.jwt_secret_base64': 'on' });
    // the same text taken literally is another key
    await rejects(token, 'token_bad_signature', { 'rtsub.jwt_secret': raw.toString('base64') });
    // invalid base64: no key, with a warning
    await rejects(token, 'token_no_key', { 'rtsub.jwt_secret': 'not base64!', 'rtsub.jwt_secret_base64': 'on' });
    assert.ok(notices.some((n) => /rtsub.jwt_secret is not valid base64/.test(n.message)));
  });

  test('RS256 with a PEM public key file', async () => {
    const { publicKey, privateKey } = await jose.generateKeyPair('RS256');
    const file = keyFile('rsa.pem', await jose.exportSPKI(publicKey));
    const token = await new jose.SignJWT({ role: 'r', exp: now() + 60 })
      .setProtectedHeader({ alg: 'RS256', typ: 'JWT' }).sign(privateKey);
    const claims = await accepts(token, { 'rtsub.jwt_algorithms': 'RS256', 'rtsub.jwt_public_key_file': file });
    assert.equal(claims.role, 'r');
    // another key pair's token
    const other = await jose.generateKeyPair('RS256');
    const forged = await new jose.SignJWT({ role: 'r', exp: now() + 60 })
      .setProtectedHeader({ alg: 'RS256' }).sign(other.privateKey);
    await rejects(forged, 'token_bad_signature', { 'rtsub.jwt_algorithms': 'RS256', 'rtsub.jwt_public_key_file': file });
    // RS256 not configured
    await rejects(token, 'token_bad_algorithm', { 'rtsub.jwt_public_key_file': file });
    // configured, but no key file
    await rejects(token, 'token_no_key', { 'rtsub.jwt_algorithms': 'RS256' });
    // unreadable key file: no key, with a warning
    await rejects(token, 'token_no_key', { 'rtsub.jwt_algorithms': 'RS256', 'rtsub.jwt_public_key_file': path.join(tmpdir, 'missing.pem') });
    assert.ok(notices.some((n) => /could not open rtsub.jwt_public_key_file/.test(n.message)));
  });

  test('ES256 with a PEM public key file, and key types are not mixed up', async () => {
    const ec = await jose.generateKeyPair('ES256');
    const ecFile = keyFile('ec.pem', await jose.exportSPKI(ec.publicKey));
    const token = await new jose.SignJWT({ role: 'e', exp: now() + 60 })
      .setProtectedHeader({ alg: 'ES256' }).sign(ec.privateKey);
    assert.equal((await accepts(token, { 'rtsub.jwt_algorithms': 'ES256', 'rtsub.jwt_public_key_file': ecFile })).role, 'e');
    await accepts(token, { 'rtsub.jwt_algorithms': 'HS256,RS256,ES256', 'rtsub.jwt_public_key_file': ecFile });
    // an ES256 token while the key file holds an RSA key
    const rsa = await jose.generateKeyPair('RS256');
    const rsaFile = keyFile('rsa2.pem', await jose.exportSPKI(rsa.publicKey));
    await rejects(token, 'token_no_key', { 'rtsub.jwt_algorithms': 'RS256,ES256', 'rtsub.jwt_public_key_file': rsaFile });
    // a P-384 key is not an ES256 key
    const p384 = await jose.generateKeyPair('ES384');
    const p384File = keyFile('p384.pem', await jose.exportSPKI(p384.publicKey));
    await rejects(token, 'token_no_key', { 'rtsub.jwt_algorithms': 'ES256', 'rtsub.jwt_public_key_file': p384File });
    assert.ok(notices.some((n) => /holds no RSA or P-256 EC public key/.test(n.message)));
    // a file without a PEM public key
    const junk = keyFile('junk.pem', 'hello\n');
    await rejects(token, 'token_no_key', { 'rtsub.jwt_algorithms': 'ES256', 'rtsub.jwt_public_key_file': junk });
    assert.ok(notices.some((n) => /contains no PEM public key/.test(n.message)));
  });

  test('alg none is never accepted', async () => {
    const payload = b64url(JSON.stringify({ role: 'admin', exp: now() + 60 }));
    for (const alg of ['none', 'None', 'NONE']) {
      const header = b64url(JSON.stringify({ alg, typ: 'JWT' }));
      await rejects(`${header}.${payload}.`, 'token_bad_algorithm', { 'rtsub.jwt_algorithms': 'HS256,RS256,ES256' });
      // even with a signature part
      await rejects(`${header}.${payload}.c2ln`, 'token_bad_algorithm');
    }
    // unsecured JWT minted by jose
    const unsecured = new jose.UnsecuredJWT({ role: 'admin' }).setExpirationTime('1h').encode();
    await rejects(unsecured, 'token_bad_algorithm');
  });

  test('HS/RS confusion: an HS256 token signed with the RSA public key is never accepted', async () => {
    const { publicKey, privateKey } = await jose.generateKeyPair('RS256');
    const pem = await jose.exportSPKI(publicKey);
    const file = keyFile('confusion.pem', pem);
    for (const secret of [pem, pem.trim(), `${pem}\n`]) {
      const forged = await hs({ role: 'admin' }, { key: enc.encode(secret) });
      // only RS256 configured: the HS256 token's algorithm is refused
      await rejects(forged, 'token_bad_algorithm', { 'rtsub.jwt_algorithms': 'RS256', 'rtsub.jwt_public_key_file': file, 'rtsub.jwt_secret': '' });
      // HS256 and RS256 configured but no secret: the public key is not a fallback
      await rejects(forged, 'token_no_key', { 'rtsub.jwt_algorithms': 'HS256,RS256', 'rtsub.jwt_public_key_file': file, 'rtsub.jwt_secret': '' });
      // with a secret: verified with the secret only
      await rejects(forged, 'token_bad_signature', { 'rtsub.jwt_algorithms': 'HS256,RS256', 'rtsub.jwt_public_key_file': file });
    }
    // and the genuine RS256 token still works in the same configuration
    const good = await new jose.SignJWT({ role: 'r', exp: now() + 60 }).setProtectedHeader({ alg: 'RS256' }).sign(privateKey);
    await accepts(good, { 'rtsub.jwt_algorithms': 'HS256,RS256', 'rtsub.jwt_public_key_file': file });
  });

  test('algorithms outside rtsub.jwt_algorithms, unknown or odd algorithms', async () => {
    await rejects(await hs({}, { alg: 'HS384' }), 'token_bad_algorithm');
    await rejects(await hs({}, { alg: 'HS512' }), 'token_bad_algorithm', { 'rtsub.jwt_algorithms': 'HS256,HS384' });
    const payload = b64url(JSON.stringify({ role: 'a', exp: now() + 60 }));
    for (const alg of ['HS999', 'hs256', 'RS384', 'PS256', '']) {
      const header = b64url(JSON.stringify({ alg }));
      await rejects(`${header}.${payload}.c2ln`, 'token_bad_algorithm', { 'rtsub.jwt_algorithms': 'HS256,HS384,HS512,RS256,ES256' });
    }
    for (const header of [{ typ: 'JWT' }, { alg: 256 }, { alg: ['HS256'] }, { alg: { x: 'HS256' } }]) {
      await rejects(`${b64url(JSON.stringify(header))}.${payload}.c2ln`, 'token_malformed');
    }
    // duplicate alg headers
    await rejects(`${b64url('{"alg":"HS256","alg":"none"}')}.${payload}.c2ln`, 'token_malformed');
  });

  test('bad signatures', async () => {
    const token = await hs();
    await rejects(token, 'token_bad_signature', { 'rtsub.jwt_secret': `${SECRET}x` });
    const [h, p, s] = token.split('.');
    const tampered = b64url(JSON.stringify({ role: 'admin', exp: now() + 3600 }));
    await rejects(`${h}.${tampered}.${s}`, 'token_bad_signature');
    await rejects(`${h}.${p}.`, 'token_bad_signature');
    await rejects(`${h}.${p}.${s.slice(0, -4)}`, 'token_bad_signature');
    await rejects(`${h}.${p}.${s}AAAA`, 'token_bad_signature');
    await rejects(`${h}.${p}.${s}AA`.slice(0, -1), 'token_bad_signature');
    // a signature whose length cannot be base64
    await rejects(`${h}.${p}.${s.slice(0, -2)}`, 'token_malformed');
    // no secret configured
    await rejects(token, 'token_no_key', { 'rtsub.jwt_secret': '' });
  });
});

describe('time claims', () => {
  test('expired, with leeway', async () => {
    await rejects(await hs({ exp: now() - 100 }), 'token_expired');
    await accepts(await hs({ exp: now() - 10 }));            // within the 30 s leeway
    await rejects(await hs({ exp: now() - 10 }), 'token_expired', { 'rtsub.jwt_leeway': '0' });
    await rejects(await hs({ exp: now() }), 'token_expired', { 'rtsub.jwt_leeway': '0' });
    await accepts(await hs({ exp: now() - 100 }), { 'rtsub.jwt_leeway': '5min' });
    await accepts(await hs({ exp: now() + 5.5 }), { 'rtsub.jwt_leeway': '0' });   // fractional NumericDate
  });

  test('missing or invalid exp', async () => {
    const t = await rawSigned(JSON.stringify({ role: 'a' }));
    await rejects(t, 'token_missing_exp');
    await rejects(await rawSigned(JSON.stringify({ role: 'a', exp: String(now() + 60) })), 'token_malformed');
    await rejects(await rawSigned(JSON.stringify({ role: 'a', exp: null })), 'token_malformed');
    await rejects(await rawSigned(JSON.stringify({ role: 'a', exp: [now() + 60] })), 'token_malformed');
    await rejects(await rawSigned(`{"role":"a","exp":${now() + 60},"exp":${now() - 1000}}`), 'token_malformed');
  });

  test('not before, with leeway', async () => {
    await rejects(await hs({ nbf: now() + 100 }), 'token_not_yet_valid');
    await accepts(await hs({ nbf: now() + 10 }));
    await rejects(await hs({ nbf: now() + 10 }), 'token_not_yet_valid', { 'rtsub.jwt_leeway': '0' });
    await accepts(await hs({ nbf: now() - 10 }), { 'rtsub.jwt_leeway': '0' });
    await rejects(await rawSigned(JSON.stringify({ role: 'a', exp: now() + 60, nbf: 'soon' })), 'token_malformed');
  });

  test('issued in the future, with leeway', async () => {
    await rejects(await hs({ iat: now() + 100 }), 'token_issued_in_future');
    await accepts(await hs({ iat: now() + 10 }));
    await rejects(await hs({ iat: now() + 10 }), 'token_issued_in_future', { 'rtsub.jwt_leeway': '0' });
    await accepts(await hs({ iat: now() - 1000 }), { 'rtsub.jwt_leeway': '0' });
  });

  test('the signature is checked before the claims', async () => {
    await rejects(await hs({ exp: now() - 1000 }, { key: enc.encode('wrong') }), 'token_bad_signature');
  });
});

describe('audience, issuer and role', () => {
  const aud = { 'rtsub.jwt_audience': 'rtsub-app' };

  test('audience as a string or an array', async () => {
    await accepts(await hs({ aud: 'rtsub-app' }), aud);
    await accepts(await hs({ aud: ['other', 'rtsub-app'] }), aud);
    await rejects(await hs({ aud: 'other' }), 'token_bad_audience', aud);
    await rejects(await hs({ aud: ['other', 'RTSUB-APP'] }), 'token_bad_audience', aud);
    await rejects(await hs({ aud: [] }), 'token_bad_audience', aud);
    await rejects(await hs({}), 'token_bad_audience', aud);
    await rejects(await hs({ aud: ['rtsub-app', 5] }), 'token_malformed', aud);
    await rejects(await hs({ aud: { x: 'rtsub-app' } }), 'token_malformed', aud);
    // not configured: aud is not checked
    await accepts(await hs({ aud: 'anything' }));
  });

  test('issuer', async () => {
    const iss = { 'rtsub.jwt_issuer': 'https://issuer.example' };
    await accepts(await hs({ iss: 'https://issuer.example' }), iss);
    await rejects(await hs({ iss: 'https://evil.example' }), 'token_bad_issuer', iss);
    await rejects(await hs({ iss: 'https://issuer.example/' }), 'token_bad_issuer', iss);
    await rejects(await hs({}), 'token_bad_issuer', iss);
    await rejects(await hs({ iss: 42 }), 'token_malformed', iss);
    await accepts(await hs({ iss: 'whoever' }));
  });

  test('role claim', async () => {
    await rejects(await rawSigned(JSON.stringify({ exp: now() + 60 })), 'token_no_role');
    await rejects(await hs({ role: 5 }), 'token_no_role');
    await rejects(await hs({ role: '' }), 'token_no_role');
    await rejects(await hs({ role: ['a'] }), 'token_no_role');
    await rejects(await hs({ role: { name: 'a' } }), 'token_no_role');
    const claims = await accepts(await hs({ app_role: 'editor' }), { 'rtsub.jwt_role_claim': 'app_role' });
    assert.equal(claims.app_role, 'editor');
    await rejects(await hs({}), 'token_no_role', { 'rtsub.jwt_role_claim': 'app_role' });
    await rejects(await rawSigned(`{"exp":${now() + 60},"role":"a","role":"admin"}`), 'token_malformed');
  });

  test('sub must be a string', async () => {
    await rejects(await hs({ sub: 42 }), 'token_malformed');
  });
});

describe('malformed input', () => {
  test('garbage', async () => {
    const valid = await hs();
    const [h, p, s] = valid.split('.');
    const cases = [
      '', 'abc', 'a.b', 'a.b.c', '...', '..', `${h}..${s}`, `.${p}.${s}`, `${h}.${p}.${s}.x`,
      `${h}.${p}`, `${h}.${p}.${s}.`, `${h}=.${p}.${s}`, `${h}.${p}=.${s}`, `${h}.${p}.${s}=`,
      `${h}.${p}.${s}+/`, `${h} .${p}.${s}`, 'Bearer ' + valid, `${b64url('not json')}.${p}.${s}`,
      `${b64url('[]')}.${p}.${s}`, `${b64url('"HS256"')}.${p}.${s}`, `${b64url('{"alg":"HS256"')}.${p}.${s}`,
      `${b64url('{"alg":"HS256"}\u0000')}.${p}.${s}`, `${Buffer.from([0x7b, 0xff, 0x7d]).toString('base64url')}.${p}.${s}`,
      'x'.repeat(5000), '\u00e9.\u00e9.\u00e9', `${h}.${'A'}.${s}`,
    ];
    for (const [i, t] of cases.entries()) {
      try {
        await rejects(t, 'token_malformed');
      } catch (e) {
        console.log(`# failed on garbage case ${i}: ${JSON.stringify(t)}`);
        throw e;
      }
    }
  });

  test('payload that is not a JSON object', async () => {
    for (const payload of ['[1,2]', '"role"', '42', 'null', '{"role":"a",}', '{"role":"a"} x', ''])
      await rejects(await rawSigned(payload), 'token_malformed');
    await rejects(await rawSigned(Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x3a, 0x31, 0x7d])), 'token_malformed');
  });

  test('deep nesting is refused, moderate nesting accepted', async () => {
    const nest = (n) => '['.repeat(n) + ']'.repeat(n);
    await accepts(await rawSigned(`{"role":"a","exp":${now() + 60},"x":${nest(50)}}`));
    await rejects(await rawSigned(`{"role":"a","exp":${now() + 60},"x":${nest(10000)}}`), 'token_malformed');
  });

  test('unsupported typ and crit headers', async () => {
    await accepts(await hs({}, { header: { typ: 'jwt' } }));
    await rejects(await hs({}, { header: { typ: 'at+jwt' } }), 'token_malformed');
    await rejects(await rawSigned(JSON.stringify({ role: 'a', exp: now() + 60 }),
      { header: { crit: ['b64'], b64: true } }), 'token_malformed');
  });

  test('tokens longer than 16 kB are refused before parsing', async () => {
    const big = await hs({ pad: 'x'.repeat(20 * 1024) });
    assert.ok(big.length > 20000);
    const e = await rejects(big, 'token_malformed');
    assert.match(e.detail, /longer than 16384 bytes/);
    // just under the limit is fine
    const fits = await hs({ pad: 'x'.repeat(11 * 1024) });
    assert.ok(fits.length < 16384);
    await accepts(fits);
    assert.equal((await db.query('SELECT rtsub.verify_token(NULL) AS c')).rows[0].c, null);
  });

  test('random bytes never crash the server', async () => {
    const valid = await hs();
    for (let i = 0; i < 300; i++) {
      const n = 1 + Math.floor(Math.random() * 400);
      let t;
      switch (i % 3) {
        case 0: t = crypto.randomBytes(n).toString('base64url'); break;
        case 1: t = [0, 1, 2].map(() => crypto.randomBytes(n).toString('base64url')).join('.'); break;
        default: {
          const chars = valid.split('');
          for (let k = 0; k < 3; k++)
            chars[Math.floor(Math.random() * chars.length)] = 'ABCxyz019-_.'[Math.floor(Math.random() * 12)];
          t = chars.join('');
        }
      }
      const r = await verify(t);
      if (r.error) assert.equal(r.error.code, '28000', `${r.error.message} for ${t}`);
    }
    assert.equal((await db.query('SELECT 1 AS one')).rows[0].one, 1);
  });
});
