// The client's DPoP half in Node, with IndexedDB supplied by fake-indexeddb (an
// in-memory implementation of the standard API; Node's structured clone keeps a
// CryptoKey as a browser's does) and a model of the server that checks every proof with
// jose, an implementation independent of ours. The real server is in e2e/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { indexedDB } from "fake-indexeddb";
import { jwtVerify, EmbeddedJWK, calculateJwkThumbprint, decodeProtectedHeader } from "jose";
import { createTesseraClient, TesseraError } from "../dist/index.js";

globalThis.indexedDB = indexedDB;
const ISSUER = "http://tessera.test";
const ath = (token) => createHash("sha256").update(token).digest("base64url");

/** Tessera's token endpoint and one API, with DPoP binding and (optionally) nonces. */
function dpopServer({ nonce = false, tokenType = null, alwaysAskNonce = false } = {}) {
  const s = { requests: [], nonceAsks: 0, sessions: new Map(), access: new Map(), jtis: new Set(), nonces: new Set() };
  let n = 0;
  const reply = (status, body, headers = {}) => {
    if (nonce) s.nonces.add((headers["DPoP-Nonce"] = `n${++n}`));
    return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
  };
  /** The proof's key thumbprint, or an error string. */
  async function check(proof, htm, htu, token) {
    if (!proof) return null;
    const { payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, { typ: "dpop+jwt", algorithms: ["ES256"] });
    assert.equal(payload.htm, htm);
    assert.equal(payload.htu, htu);
    assert.ok(Math.abs(payload.iat - Date.now() / 1000) < 5);
    assert.ok(!s.jtis.has(payload.jti), "a jti is used once");
    s.jtis.add(payload.jti);
    assert.equal(payload.ath, token ? ath(token) : undefined);
    assert.deepEqual(Object.keys(protectedHeader.jwk).sort(), ["crv", "kty", "x", "y"]);
    if (nonce && (alwaysAskNonce || !s.nonces.has(payload.nonce))) return "nonce";
    return calculateJwkThumbprint(protectedHeader.jwk);
  }
  s.fetch = async (input, init = {}) => {
    const url = new URL(input);
    const headers = new Headers(init.headers);
    const proof = headers.get("dpop");
    s.requests.push({ path: url.pathname, proof, auth: headers.get("authorization") });
    if (url.pathname === "/oauth/token") {
      const jkt = await check(proof, "POST", `${ISSUER}/oauth/token`);
      if (jkt === "nonce") {
        s.nonceAsks++;
        return reply(400, { error: "use_dpop_nonce" });
      }
      const form = new URLSearchParams(init.body);
      let session;
      if (form.get("grant_type") === "password") {
        session = { jkt, n: ++n };
      } else {
        session = s.sessions.get(form.get("refresh_token"));
        if (!session) return reply(400, { error: "invalid_grant" });
        if (session.jkt && !jkt) return reply(400, { error: "invalid_dpop_proof" });
        if (session.jkt !== jkt) return reply(400, { error: "invalid_grant" });
      }
      const refresh = `tsr_${++n}`;
      const access = `at_${n}`;
      s.sessions.set(refresh, session);
      s.access.set(access, session.jkt);
      const type = tokenType ?? (jkt ? "DPoP" : "Bearer");
      return reply(200, { access_token: access, token_type: type, expires_in: 0, scope: "", refresh_token: refresh });
    }
    const [scheme, token] = (headers.get("authorization") ?? " ").split(" ");
    if (!s.access.has(token)) return reply(401, { error: "invalid_token" });
    const bound = s.access.get(token);
    if (bound && tokenType !== "Bearer") {
      if (scheme !== "DPoP") return reply(401, { error: "invalid_token" });
      // The method as fetch puts it on the wire (it upper-cases "delete", not "patch").
      const jkt = await check(proof, new Request(url, { method: init.method }).method, url.origin + url.pathname, token);
      if (jkt === "nonce") {
        s.nonceAsks++;
        return reply(401, { error: "use_dpop_nonce" }, { "WWW-Authenticate": 'DPoP error="use_dpop_nonce"' });
      }
      if (jkt !== bound) return reply(401, { error: "invalid_token" });
    } else if (scheme !== "Bearer") return reply(401, { error: "invalid_token" });
    return reply(200, { ok: true });
  };
  return s;
}

function memory() {
  let v = null;
  return { get: () => v, set: (x) => void (v = x) };
}

const client = (server, clientId = "app") =>
  createTesseraClient({ issuer: ISSUER, clientId, storage: memory(), fetch: server.fetch });

async function storedKey(id) {
  const open = indexedDB.open("tessera-dpop", 1);
  const db = await new Promise((ok) => (open.onsuccess = () => ok(open.result)));
  const req = db.transaction("keys").objectStore("keys").get(id);
  return new Promise((ok) => (req.onsuccess = () => (db.close(), ok(req.result))));
}

test("login, refresh and API calls carry proofs of one non-extractable key kept in IndexedDB", async () => {
  const server = dpopServer();
  const c = client(server, "bound");
  const res = await c.login("a@example.com", "pw");
  assert.equal(res.token_type, "DPoP");
  assert.equal((await c.fetch(`${ISSUER}/v1/me?x=1#frag`)).status, 200, "expired: a refresh, then the call");
  assert.equal((await c.fetch(`${ISSUER}/v1/me`, { method: "delete" })).status, 200);
  const paths = server.requests.map((r) => r.path);
  assert.deepEqual(paths, ["/oauth/token", "/oauth/token", "/v1/me", "/oauth/token", "/v1/me"]);
  assert.ok(server.requests.every((r) => r.proof), "every request has a proof");
  assert.ok(server.requests.filter((r) => r.path === "/v1/me").every((r) => r.auth.startsWith("DPoP at_")));

  const pair = await storedKey(`${ISSUER} bound`);
  assert.equal(pair.privateKey.extractable, false);
  const jwk = await crypto.subtle.exportKey("jwk", pair.publicKey);
  const jkt = await calculateJwkThumbprint(jwk);
  assert.ok([...server.access.values()].every((bound) => bound === jkt), "every token is bound to the stored key");
  c.close();
});

test("tabs racing to make the key all sign with the one stored first; a later page reuses it", async () => {
  const server = dpopServer();
  const tabs = Array.from({ length: 5 }, () => client(server, "race"));
  await Promise.all(tabs.map((t) => t.login("a@example.com", "pw")));
  const later = client(server, "race");
  await later.login("a@example.com", "pw");
  const keys = new Set(server.requests.map((r) => JSON.stringify(decodeProtectedHeader(r.proof).jwk)));
  assert.equal(keys.size, 1, `${keys.size} keys`);
  const stored = await crypto.subtle.exportKey("jwk", (await storedKey(`${ISSUER} race`)).publicKey);
  assert.equal(await calculateJwkThumbprint(JSON.parse([...keys][0])), await calculateJwkThumbprint(stored));
  // Another client of the same issuer has a key of its own.
  const other = client(server, "other");
  await other.login("a@example.com", "pw");
  assert.notEqual(JSON.stringify(decodeProtectedHeader(server.requests.at(-1).proof).jwk), [...keys][0]);
  [...tabs, later, other].forEach((t) => t.close());
});

test("a nonce challenge is answered once, and the latest nonce of each origin goes into later proofs", async () => {
  const server = dpopServer({ nonce: true });
  const c = client(server, "nonce");
  await c.login("a@example.com", "pw");
  assert.equal(server.nonceAsks, 1, "the login is asked once");
  // The refresh and the call take the nonce of the answer before them.
  assert.equal((await c.fetch(`${ISSUER}/v1/me`)).status, 200);
  assert.equal(server.nonceAsks, 1);
  // An API on another origin has given no nonce yet: it asks, once.
  const api = "http://api.test/v1/things";
  assert.equal((await c.fetch(api)).status, 200);
  assert.equal(server.nonceAsks, 2);
  assert.equal((await c.fetch(api)).status, 200);
  assert.equal(server.nonceAsks, 2, "no more challenges: each proof carries the latest nonce");
  assert.deepEqual(server.requests.map((r) => r.path), [
    "/oauth/token", "/oauth/token", "/oauth/token", "/v1/me",
    "/oauth/token", "/v1/things", "/v1/things", "/oauth/token", "/v1/things",
  ]);
  c.close();
});

test("a server that asks for a nonce every time gets one retry, not a loop", async () => {
  const server = dpopServer({ nonce: true, alwaysAskNonce: true });
  const c = client(server, "stubborn");
  await assert.rejects(c.login("a@example.com", "pw"), (e) => e instanceof TesseraError && e.code === "use_dpop_nonce");
  assert.equal(server.requests.length, 2);
  c.close();
});

test("a token the server calls Bearer is sent as Bearer, without a proof", async () => {
  const server = dpopServer({ tokenType: "Bearer" });
  const c = client(server, "bearer");
  assert.equal((await c.login("a@example.com", "pw")).token_type, "Bearer");
  assert.equal((await c.fetch(`${ISSUER}/v1/me`)).status, 200);
  const api = server.requests.find((r) => r.path === "/v1/me");
  assert.match(api.auth, /^Bearer at_/);
  assert.equal(api.proof, null);
  c.close();
});

test("without IndexedDB (Node) there is no key: Bearer, no proof", async () => {
  const saved = globalThis.indexedDB;
  delete globalThis.indexedDB;
  try {
    const server = dpopServer();
    const c = client(server, "node");
    assert.equal((await c.login("a@example.com", "pw")).token_type, "Bearer");
    assert.equal((await c.fetch(`${ISSUER}/v1/me`)).status, 200);
    assert.ok(server.requests.every((r) => r.proof === null));
    assert.match(server.requests.at(-1).auth, /^Bearer /);
    c.close();
  } finally {
    globalThis.indexedDB = saved;
  }
});
