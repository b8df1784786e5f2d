// The client's rules against an in-process model of the server's refresh rules
// (rotation, grace replay, reuse revokes the session). The real server and a real
// browser are in e2e/; these pin the client's own logic, fast and deterministic.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createTesseraClient, SessionEndedError } from "../dist/index.js";

/** A model of Tessera's token endpoint and one protected API. */
function fakeServer({ expiresIn = 0, refreshedExpiresIn = expiresIn } = {}) {
  const s = { rotations: 0, replays: 0, requests: 0, current: null, previous: null, successor: null, live: true, jar: null, access: new Set(), lose: 0 };
  let n = 0;
  const issue = () => {
    const refresh = `tsr_${++n}`;
    const access = `at_${n}`;
    s.access.add(access);
    return { refresh, access };
  };
  const reply = (status, body) => new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
  const grant = (cookie, t, life = expiresIn) => {
    if (cookie) s.jar = t.refresh;
    return reply(200, { access_token: t.access, token_type: "Bearer", expires_in: life, scope: "", ...(cookie ? {} : { refresh_token: t.refresh }) });
  };
  s.fetch = async (url, init = {}) => {
    s.requests++;
    const path = new URL(url).pathname;
    const auth = new Headers(init.headers).get("authorization")?.slice(7);
    if (path === "/oauth/token") {
      const form = new URLSearchParams(init.body);
      const password = form.get("grant_type") === "password";
      const cookie = form.get("token_delivery") === "cookie" || (!password && !form.get("refresh_token"));
      if (password) {
        const t = issue();
        s.current = t; s.live = true;
        return grant(cookie, t);
      }
      const presented = form.get("refresh_token") ?? s.jar;
      if (!s.live || !presented) return reply(400, { error: "invalid_grant" });
      let out;
      if (presented === s.current.refresh) {
        s.rotations++;
        s.previous = s.current; s.current = out = issue();
      } else if (presented === s.previous?.refresh) {
        s.replays++;
        out = s.current;
      } else {
        s.live = false;
        return reply(400, { error: "invalid_grant" });
      }
      if (s.lose > 0) {
        s.lose--;
        throw new TypeError("network error after commit");
      }
      return grant(cookie, out, refreshedExpiresIn);
    }
    if (path === "/v1/logout") { s.live = false; s.jar = null; return new Response(null, { status: 204 }); }
    if (path === "/v1/me") return s.live && s.access.has(auth) && auth === s.current.access ? reply(200, { id: "u" }) : reply(401, { error: "invalid_token" });
    return reply(404, {});
  };
  return s;
}

function memory() {
  let v = null;
  return { get: () => v, set: (x) => { v = x; }, peek: () => v };
}

const ISSUER = "http://tessera.test";

test("twenty parallel calls past expiry cause one refresh", async () => {
  const server = fakeServer();
  const client = createTesseraClient({ issuer: ISSUER, storage: memory(), fetch: server.fetch });
  await client.login("a@example.com", "pw");
  const results = await Promise.all(Array.from({ length: 20 }, () => client.fetch(`${ISSUER}/v1/me`)));
  assert.deepEqual(results.map((r) => r.status), Array(20).fill(200));
  assert.equal(server.rotations, 1);
  client.close();
});

test("a lost refresh response is recovered through the grace window", async () => {
  const server = fakeServer();
  const store = memory();
  const client = createTesseraClient({ issuer: ISSUER, storage: store, fetch: server.fetch });
  await client.login("a@example.com", "pw");
  server.lose = 1;
  const res = await client.fetch(`${ISSUER}/v1/me`);
  assert.equal(res.status, 200);
  assert.equal(server.rotations, 1);
  assert.equal(server.replays, 1, "the retry is one grace replay");
  assert.equal(store.peek(), server.current.refresh, "the successor is kept");
  client.close();
});

test("a refused refresh ends the session once and never loops", async () => {
  const server = fakeServer();
  const client = createTesseraClient({ issuer: ISSUER, storage: memory(), fetch: server.fetch });
  const ends = [];
  client.onSessionEnd((r) => ends.push(r));
  await client.login("a@example.com", "pw");
  server.live = false; // reuse detected elsewhere: the session is revoked
  await assert.rejects(client.fetch(`${ISSUER}/v1/me`), SessionEndedError);
  const before = server.requests;
  await assert.rejects(client.fetch(`${ISSUER}/v1/me`), SessionEndedError);
  await assert.rejects(client.accessToken(), SessionEndedError);
  assert.equal(server.requests, before, "no request after the end");
  assert.deepEqual(ends, ["refused"]);
  client.close();
});

test("a 401 refreshes and retries once, then returns the answer", async () => {
  const server = fakeServer({ expiresIn: 900 });
  const client = createTesseraClient({ issuer: ISSUER, storage: memory(), fetch: server.fetch });
  await client.login("a@example.com", "pw");
  server.access.clear(); // e.g. the key rotated: every token so far is refused
  const res = await client.fetch(`${ISSUER}/v1/me`);
  assert.equal(res.status, 200);
  assert.equal(server.rotations, 1);
  const stubborn = await client.fetch(`${ISSUER}/v1/other`);
  assert.equal(stubborn.status, 404);
  client.close();
});

test("logout clears the stored token and ends the session", async () => {
  const server = fakeServer({ expiresIn: 900 });
  const store = memory();
  const client = createTesseraClient({ issuer: ISSUER, storage: store, fetch: server.fetch });
  const ends = [];
  client.onSessionEnd((r) => ends.push(r));
  await client.login("a@example.com", "pw");
  await client.logout();
  assert.equal(store.peek(), null);
  assert.equal(server.live, false);
  assert.deepEqual(ends, ["logout"]);
  await assert.rejects(client.accessToken(), SessionEndedError);
  client.close();
});

test("tabs without Web Locks elect one leader over a BroadcastChannel: one rotation", async () => {
  // The login's token is born expired; the refreshed one lives a minute.
  const server = fakeServer({ expiresIn: 0, refreshedExpiresIn: 60 });
  const channel = `test:${Math.random()}`;
  const tabs = Array.from({ length: 4 }, () => createTesseraClient({ issuer: ISSUER, channel, fetch: server.fetch }));
  // Let the heartbeats and their answers reach every tab. Node delivers channel messages
  // in a later phase of the event loop than timers: one 50 ms sleep on a loaded machine
  // can end before any beat is delivered, so sleep in several turns of the loop.
  for (let i = 0; i < 10; i++) await new Promise((r) => setTimeout(r, 5));
  await tabs[0].login("a@example.com", "pw");
  const ends = [];
  tabs.forEach((t) => t.onSessionEnd((r) => ends.push(r)));
  const calls = tabs.flatMap((t) => Array.from({ length: 5 }, () => t.fetch(`${ISSUER}/v1/me`)));
  const results = await Promise.all(calls);
  assert.deepEqual(results.map((r) => r.status), Array(20).fill(200));
  assert.equal(server.rotations, 1, `rotations: ${server.rotations}, replays: ${server.replays}`);
  assert.equal(server.replays, 0);
  await tabs[2].logout();
  // The other tabs hear of it over the channel: wait in short turns until all four
  // have (or five seconds, a failure), not one fixed sleep a loaded machine can outlast.
  for (let waited = 0; ends.length < 4 && waited < 5000; waited += 10) {
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.deepEqual(ends, ["logout", "logout", "logout", "logout"]);
  tabs.forEach((t) => t.close());
});
