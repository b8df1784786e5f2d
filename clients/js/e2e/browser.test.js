// End to end in a real browser: headless Chromium (Debian's, driven by playwright-core)
// against the real server binary, with 2-second access tokens, on http://localhost.
// The demo page is served from its own origin, as an app would be.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { createHash, randomUUID } from "node:crypto";
import { chromium } from "playwright-core";
import { SignJWT, exportJWK, generateKeyPair, calculateJwkThumbprint, jwtVerify, EmbeddedJWK, decodeJwt } from "jose";
import { serveDemo } from "../demo/serve.mjs";
import { startServer, signUp, PASSWORD } from "./server.mjs";
import { createTesseraClient, SessionEndedError } from "../dist/index.js";

const OUT = new URL("../test-output/", import.meta.url).pathname;
// Short-lived access tokens so the tests reach expiry quickly; long enough that a
// refreshed token stays fresh to the client (3/4 of its life) through the page
// evaluations that follow on a loaded machine.
const TTL_MS = 4000;
let server, demo, evil, browser, issuer, app;

/** The server's count of refreshes with this outcome (ok: a rotation). */
async function refreshes(outcome = "ok") {
  const text = await (await fetch(`${issuer}/metrics`)).text();
  const re = new RegExp(`^tessera_refreshes(_total)?\\{[^}]*outcome="${outcome}"`);
  const line = text.split("\n").find((l) => re.test(l));
  return line ? Number(line.split(" ").pop()) : 0;
}
const refreshesOk = () => refreshes("ok");

/** Opens the demo page on `iss`; `watch(page)` runs before it loads. */
async function openDemo(context, iss = issuer, watch = () => {}) {
  const page = await context.newPage();
  if (process.env.E2E_DEBUG) page.on("console", (m) => console.log("[page]", m.text()));
  watch(page);
  await page.goto(`${app}/demo?issuer=${encodeURIComponent(iss)}`);
  await page.waitForFunction(() => window.tessera && window.demoState);
  return page;
}

/** Signs up and logs in through the demo page's own form. */
async function logIn(page) {
  const email = `${randomUUID()}@example.com`;
  await page.fill("#email", email);
  await page.fill("#password", PASSWORD);
  await page.click("#signup");
  await page.waitForFunction((e) => document.getElementById("out").textContent.includes(e), email);
  await page.click("#login");
  await page.waitForFunction(() => demoState().status.startsWith("Logged in"));
}

const pastExpiry = () => new Promise((r) => setTimeout(r, TTL_MS + 500));

// The app's settings for a server: 2-second access tokens, the demo's origin allowed.
const appServer = (env = {}) =>
  startServer({ TESSERA_ACCESS_TOKEN_TTL_SECS: String(TTL_MS / 1000), TESSERA_CORS_ALLOWED_ORIGINS: app, ...env });

before(async () => {
  mkdirSync(OUT, { recursive: true });
  demo = await serveDemo(0);
  evil = await serveDemo(0);
  app = `http://localhost:${demo.address().port}`;
  server = await appServer();
  issuer = server.issuer;
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  server?.stop();
  demo?.close();
  evil?.close();
});

test("after expiry /v1/me still succeeds through a silent refresh; the cookie is out of script reach", async () => {
  const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
  const page = await openDemo(context);
  await logIn(page);
  await page.screenshot({ path: join(OUT, "demo-before-refresh.png") });
  const before = await refreshesOk();

  await pastExpiry();
  await page.click("#me");
  await page.waitForFunction(() => demoState().refreshes === 1);
  const status = await page.evaluate(async (iss) => (await tessera.fetch(iss + "/v1/me")).status, issuer);
  assert.equal(status, 200);
  assert.equal(await refreshesOk(), before + 1, "exactly one silent refresh");
  await page.click("#sessions");
  await page.waitForSelector("#session-table tr:nth-child(2)");
  await page.screenshot({ path: join(OUT, "demo-after-refresh.png") });

  const [cookie] = (await context.cookies()).filter((c) => c.name === "tessera_refresh");
  assert.ok(cookie, "the browser holds the refresh cookie");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.path, "/oauth");
  assert.equal(cookie.sameSite, "Strict");
  assert.ok(!(await page.evaluate(() => document.cookie)).includes("tessera_refresh"));
  // Even a page under the cookie's own path cannot read it.
  const own = await context.newPage();
  await own.goto(`${issuer}/oauth/token`);
  assert.ok(!(await own.evaluate(() => document.cookie)).includes("tessera_refresh"));
  await context.close();
});

test("four tabs and twenty parallel calls past expiry: exactly one rotation, nobody logged out", async () => {
  const context = await browser.newContext();
  const first = await openDemo(context);
  await logIn(first);
  const tabs = [first];
  for (let i = 0; i < 3; i++) tabs.push(await openDemo(context));
  for (const tab of tabs) await tab.waitForFunction(() => demoState().status.startsWith("Logged in"));

  await pastExpiry();
  const before = await refreshesOk();
  const replaysBefore = await refreshes("replayed_in_grace");
  const results = await Promise.all(
    tabs.map((tab) =>
      tab.evaluate(async (iss) => {
        const calls = Array.from({ length: 5 }, () => tessera.fetch(iss + "/v1/me").then((r) => r.status));
        return Promise.all(calls);
      }, issuer),
    ),
  );
  const rotations = (await refreshesOk()) - before;
  console.log(`many tabs: ${results.flat().length} calls in ${tabs.length} tabs, rotations: ${rotations}`);
  assert.deepEqual(results.flat(), Array(20).fill(200));
  assert.equal(rotations, 1);
  // One refresh request in all: not several that the grace window happened to absorb.
  assert.equal(await refreshes("replayed_in_grace"), replaysBefore);
  for (const tab of tabs) assert.match((await tab.evaluate(() => demoState())).status, /^Logged in/);
  await context.close();
});

test("a forged request without the CSRF proof gets 403 and rotates nothing", async () => {
  const context = await browser.newContext();
  const page = await openDemo(context);
  await logIn(page);
  const before = await refreshesOk();

  // Another origin on the same site (so SameSite lets the cookie go): a plain form post.
  const attacker = await context.newPage();
  await attacker.goto(`http://localhost:${evil.address().port}/demo`);
  const [response] = await Promise.all([
    attacker.waitForNavigation(),
    attacker.evaluate((iss) => {
      const form = document.createElement("form");
      form.method = "POST";
      form.action = iss + "/oauth/token";
      form.innerHTML = '<input name="grant_type" value="refresh_token">';
      document.body.append(form);
      form.submit();
    }, issuer),
  ]);
  assert.equal(response.status(), 403);
  assert.equal((await response.json()).error, "csrf_check_failed");
  await attacker.goBack();
  // A script there that adds the header is stopped by the CORS preflight.
  const scripted = await attacker.evaluate(async (iss) => {
    try {
      const r = await fetch(iss + "/oauth/token", {
        method: "POST",
        credentials: "include",
        headers: { "X-Tessera-CSRF": "1" },
        body: new URLSearchParams({ grant_type: "refresh_token" }),
      });
      return r.status;
    } catch (e) {
      return "blocked";
    }
  }, issuer);
  assert.equal(scripted, "blocked");
  assert.equal(await refreshesOk(), before, "a forged request rotated the token");
  assert.equal(await page.evaluate(async (iss) => (await tessera.fetch(iss + "/v1/me")).status, issuer), 200);
  await context.close();
});

test("a lost refresh response is recovered through the grace window", async () => {
  const context = await browser.newContext();
  const page = await openDemo(context);
  await logIn(page);
  await pastExpiry();
  const before = { ok: await refreshesOk(), replays: await refreshes("replayed_in_grace") };
  // The first refresh reaches the server and rotates; its answer (and cookie) is lost.
  let lost = false;
  await page.route(`${issuer}/oauth/token`, async (route) => {
    if (lost || route.request().method() !== "POST") return route.continue();
    lost = true;
    await fetch(route.request().url(), {
      method: "POST",
      headers: { ...(await route.request().allHeaders()), cookie: (await context.cookies()).map((c) => `${c.name}=${c.value}`).join("; ") },
      body: route.request().postData(),
    });
    await route.abort("connectionreset");
  });
  const status = await page.evaluate(async (iss) => (await tessera.fetch(iss + "/v1/me")).status, issuer);
  assert.ok(lost);
  assert.equal(status, 200);
  assert.equal((await refreshesOk()) - before.ok, 1, "one rotation");
  assert.equal((await refreshes("replayed_in_grace")) - before.replays, 1, "one grace replay");
  assert.match((await page.evaluate(() => demoState())).status, /^Logged in/);
  await context.close();
});

test("logout in one tab logs out the others", async () => {
  const context = await browser.newContext();
  const first = await openDemo(context);
  await logIn(first);
  const tabs = [first];
  for (let i = 0; i < 3; i++) tabs.push(await openDemo(context));
  for (const tab of tabs) await tab.waitForFunction(() => demoState().status.startsWith("Logged in"));

  await tabs[2].click("#logout");
  for (const tab of tabs) await tab.waitForFunction(() => demoState().status === "Logged out (logout).");
  for (const tab of tabs) {
    const outcome = await tab.evaluate(() => tessera.accessToken().then(() => "token", (e) => e.name));
    assert.equal(outcome, "Error");
  }
  assert.deepEqual((await context.cookies()).filter((c) => c.name === "tessera_refresh"), []);
  await context.close();
});

test("Node with a storage callback: silent refresh, and reuse elsewhere ends the session cleanly", async () => {
  let saved = null;
  const storage = { get: () => saved, set: (t) => void (saved = t) };
  const client = createTesseraClient({ issuer, storage });
  const ends = [];
  client.onSessionEnd((r) => ends.push(r));
  const email = await signUp(issuer);
  // No IndexedDB in Node: no key to keep, so no DPoP (a bound session would die with
  // the process that held its key).
  assert.equal((await client.login(email, PASSWORD)).token_type, "Bearer");
  const first = saved;
  assert.match(first, /^tsr_/);
  await pastExpiry();
  assert.equal((await client.fetch(`${issuer}/v1/me`)).status, 200);
  assert.notEqual(saved, first, "rotated and kept");
  // A thief replays the first token: outside the grace window's successor rule (the
  // successor was used), so the server revokes the session.
  await pastExpiry();
  assert.equal((await client.fetch(`${issuer}/v1/me`)).status, 200);
  const stolen = await fetch(`${issuer}/oauth/token`, {
    method: "POST",
    body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: first }),
  });
  assert.equal(stolen.status, 400);
  await pastExpiry();
  await assert.rejects(client.fetch(`${issuer}/v1/me`), SessionEndedError);
  await assert.rejects(client.fetch(`${issuer}/v1/me`), SessionEndedError);
  assert.deepEqual(ends, ["refused"]);
  assert.equal(saved, null);
  client.close();
});

/** Every DPoP proof the page sends, with the request it went with. */
function recordProofs(page) {
  const sent = [];
  page.on("request", (r) => {
    const h = r.headers();
    if (h.dpop) sent.push({ method: r.method(), url: r.url(), proof: h.dpop, auth: h.authorization });
  });
  return sent;
}

/** Token endpoint and /v1/me answers the page gets, in order of arrival:
 * [path, status, error or "", token_type]; `await seen.read()` before looking. */
function recordAnswers(page, iss) {
  const seen = [];
  const reading = [];
  seen.read = () => Promise.all(reading);
  page.on("response", (r) => {
    const path = r.url().startsWith(iss) && new URL(r.url()).pathname;
    if (r.request().method() === "OPTIONS" || !["/oauth/token", "/v1/me"].includes(path)) return;
    const entry = [path, r.status()];
    seen.push(entry);
    reading.push((async () => {
      const challenge = /use_dpop_nonce/.test((await r.allHeaders())["www-authenticate"] ?? "") ? "use_dpop_nonce" : "";
      // Chromium may not keep a `no-store` body for the DevTools protocol (seen here:
      // the read of a 200 /v1/me never settled); a body not had within 2 s counts as
      // having no error, so an error answer still fails the assertions that expect none.
      const body = await Promise.race([
        r.json().catch(() => ({})),
        new Promise((ok) => setTimeout(() => ok({}), 2000)),
      ]);
      entry.push(body.error ?? challenge, body.token_type);
    })());
  });
  return seen;
}

const ath = (token) => createHash("sha256").update(token).digest("base64url");

/** A proof from a key that is not the browser's: what a thief holding the copy can make. */
async function foreignProof(htm, htu, extra = {}) {
  const { privateKey, publicKey } = await generateKeyPair("ES256");
  return new SignJWT({ htm, htu, jti: randomUUID(), ...extra })
    .setProtectedHeader({ typ: "dpop+jwt", alg: "ES256", jwk: await exportJWK(publicKey) })
    .setIssuedAt()
    .sign(privateKey);
}

test("DPoP: the session is bound to a key that stays in the browser; copies of its tokens fail outside it", async () => {
  const context = await browser.newContext();
  let proofs, answers;
  const page = await openDemo(context, issuer, (p) => {
    proofs = recordProofs(p);
    answers = recordAnswers(p, issuer);
  });
  await logIn(page);
  await answers.read();
  const login = answers.find(([path, status]) => path === "/oauth/token" && status === 200);
  assert.equal(login?.[3], "DPoP", "the login's token_type");
  assert.equal(await page.evaluate(async (iss) => (await tessera.fetch(iss + "/v1/me")).status, issuer), 200);

  // The key: in the page's IndexedDB, and its private half cannot be exported.
  const key = await page.evaluate(async () => {
    const db = await new Promise((ok) => (indexedDB.open("tessera-dpop").onsuccess = (e) => ok(e.target.result)));
    const [id] = await new Promise((ok) => (db.transaction("keys").objectStore("keys").getAllKeys().onsuccess = (e) => ok(e.target.result)));
    const pair = await new Promise((ok) => (db.transaction("keys").objectStore("keys").get(id).onsuccess = (e) => ok(e.target.result)));
    const exported = await crypto.subtle.exportKey("jwk", pair.privateKey).then(() => "exported", (e) => e.name);
    return { id, extractable: pair.privateKey.extractable, exported, jwk: await crypto.subtle.exportKey("jwk", pair.publicKey) };
  });
  assert.equal(key.id, `${issuer} app`);
  assert.equal(key.extractable, false);
  assert.equal(key.exported, "InvalidAccessError");
  const jkt = await calculateJwkThumbprint(key.jwk);
  const access = await page.evaluate(() => tessera.accessToken());
  assert.equal(decodeJwt(access).cnf?.jkt, jkt, "the access token is bound to the browser's key");

  // What the built client sent from Chromium verifies with jose, claim by claim.
  const jtis = new Set();
  for (const { method, url, proof, auth } of proofs) {
    const { payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, { typ: "dpop+jwt", algorithms: ["ES256"] });
    assert.equal(await calculateJwkThumbprint(protectedHeader.jwk), jkt);
    assert.deepEqual(Object.keys(protectedHeader.jwk).sort(), ["crv", "kty", "x", "y"]);
    assert.equal(payload.htm, method);
    assert.equal(payload.htu, url.split(/[?#]/)[0]);
    assert.ok(Math.abs(payload.iat - Date.now() / 1000) < 30);
    assert.ok(!jtis.has(payload.jti));
    jtis.add(payload.jti);
    if (auth) assert.equal(payload.ath, ath(auth.replace(/^DPoP /, "")));
    else assert.equal(payload.ath, undefined);
  }
  const apiCalls = proofs.filter((p) => p.auth);
  assert.ok(apiCalls.length >= 2 && apiCalls.every((p) => p.auth.startsWith("DPoP ")));

  // A thief copies the refresh cookie and the access token out of the browser.
  const [cookie] = (await context.cookies()).filter((c) => c.name === "tessera_refresh");
  assert.ok(cookie);
  const before = { ok: await refreshesOk(), replays: await refreshes("replayed_in_grace") };
  const steal = async (proof) => {
    const res = await fetch(`${issuer}/oauth/token`, {
      method: "POST",
      headers: proof ? { DPoP: proof } : {},
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: cookie.value }),
    });
    return [res.status, (await res.json()).error];
  };
  const noProof = await steal();
  const otherKey = await steal(await foreignProof("POST", `${issuer}/oauth/token`));
  assert.deepEqual(noProof, [400, "invalid_dpop_proof"]);
  assert.deepEqual(otherKey, [400, "invalid_grant"]);
  const meWith = async (auth, proof) =>
    (await fetch(`${issuer}/v1/me`, { headers: { Authorization: auth, ...(proof ? { DPoP: proof } : {}) } })).status;
  const asBearer = await meWith(`Bearer ${access}`);
  const withOtherKey = await meWith(`DPoP ${access}`, await foreignProof("GET", `${issuer}/v1/me`, { ath: ath(access) }));
  assert.deepEqual([asBearer, withOtherKey], [401, 401]);

  // The copies spent nothing: the page refreshes as before, one rotation, no replay.
  await pastExpiry();
  assert.equal(await page.evaluate(async (iss) => (await tessera.fetch(iss + "/v1/me")).status, issuer), 200);
  assert.notEqual(await page.evaluate(() => tessera.accessToken()), access);
  assert.equal((await refreshesOk()) - before.ok, 1);
  assert.equal(await refreshes("replayed_in_grace"), before.replays);
  assert.match((await page.evaluate(() => demoState())).status, /^Logged in/);
  console.log(
    `browser DPoP: login token_type ${login[3]}, cnf.jkt = thumbprint of the IndexedDB key (private key extractable: ${key.extractable}, export: ${key.exported}); ` +
      `${proofs.length} proofs from Chromium verify with jose; copied refresh token from Node: no proof ${noProof.join(" ")}, ` +
      `other key ${otherKey.join(" ")}; copied access token: Bearer ${asBearer}, other key ${withOtherKey}; the page then refreshes: /v1/me 200, rotations 1`,
  );
  await context.close();
});

test("DPoP with nonces required: the challenge is answered once, and the nonce carries on to the API and the next refresh", async () => {
  const nonced = await appServer({ TESSERA_DPOP_REQUIRE_NONCE: "true" });
  try {
    const context = await browser.newContext();
    let answers, probed;
    const page = await openDemo(context, nonced.issuer, (p) => {
      answers = recordAnswers(p, nonced.issuer);
      probed = new Promise((ok) => p.on("console", (m) => m.text().startsWith("probe:") && ok()));
    });
    // The page's probe for an existing session: a refresh with no cookie. Its first proof
    // has no nonce: challenged; the retry has one and reaches the cookie check.
    await probed;
    await answers.read();
    const probe = answers.map(([p, s, e]) => `${p} ${s} ${e}`);
    assert.deepEqual(probe, ["/oauth/token 400 use_dpop_nonce", "/oauth/token 400 invalid_request"]);
    await logIn(page);
    await pastExpiry();
    assert.equal(await page.evaluate(async (iss) => (await tessera.fetch(iss + "/v1/me")).status, nonced.issuer), 200);
    assert.match((await page.evaluate(() => demoState())).status, /^Logged in/);
    await answers.read();
    // From then on every proof carries a current nonce: the one the token endpoint gave
    // serves the issuer's API routes too. Login, /v1/me, refresh, /v1/me.
    const rest = answers.slice(probe.length).map(([p, s, e]) => `${p} ${s}${e ? " " + e : ""}`);
    assert.deepEqual(rest, ["/oauth/token 200", "/v1/me 200", "/oauth/token 200", "/v1/me 200"]);
    console.log(`browser DPoP nonce: page probe ${probe.join(", ")}; then ${rest.join(", ")}`);
    await context.close();
  } finally {
    nonced.stop();
  }
});
