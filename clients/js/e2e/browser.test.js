// End to end in a real browser: headless Chromium (Debian's, driven by playwright-core)
// against the real server binary, with 2-second access tokens, on http://localhost.
// The demo page is served from its own origin, as an app would be.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes, randomUUID } from "node:crypto";
import { chromium } from "playwright-core";
import { serveDemo } from "../demo/serve.mjs";
import { createTesseraClient, SessionEndedError } from "../dist/index.js";

const PASSWORD = "correct horse battery staple";
const OUT = new URL("../test-output/", import.meta.url).pathname;
const TTL_MS = 2000;
let server, demo, evil, browser, issuer, app;

const freePort = () =>
  new Promise((ok) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });

/** The server's count of refreshes with this outcome (ok: a rotation). */
async function refreshes(outcome = "ok") {
  const text = await (await fetch(`${issuer}/metrics`)).text();
  const re = new RegExp(`^tessera_refreshes(_total)?\\{[^}]*outcome="${outcome}"`);
  const line = text.split("\n").find((l) => re.test(l));
  return line ? Number(line.split(" ").pop()) : 0;
}
const refreshesOk = () => refreshes("ok");

async function openDemo(context) {
  const page = await context.newPage();
  if (process.env.E2E_DEBUG) page.on("console", (m) => console.log("[page]", m.text()));
  await page.goto(`${app}/demo?issuer=${encodeURIComponent(issuer)}`);
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

before(async () => {
  mkdirSync(OUT, { recursive: true });
  const [port] = [await freePort()];
  issuer = `http://localhost:${port}`;
  demo = await serveDemo(0);
  evil = await serveDemo(0);
  app = `http://localhost:${demo.address().port}`;
  const dir = mkdtempSync(join(tmpdir(), "tessera-e2e-"));
  server = spawn(process.env.TESSERA_BIN ?? "tessera", ["serve"], {
    env: {
      ...process.env,
      TESSERA_LISTEN: `127.0.0.1:${port}`,
      TESSERA_DATABASE_URL: `sqlite://${dir}/tessera.db`,
      TESSERA_SECRET_KEY: randomBytes(32).toString("base64"),
      TESSERA_ISSUER: issuer,
      TESSERA_ACCESS_TOKEN_TTL_SECS: String(TTL_MS / 1000),
      TESSERA_COOKIE_SECURE: "false",
      TESSERA_CORS_ALLOWED_ORIGINS: app,
      TESSERA_LOG: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${issuer}/healthz`)).ok) break;
    } catch {}
    if (i > 100) throw new Error("the server did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
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
  const email = `${randomUUID()}@example.com`;
  const res = await fetch(`${issuer}/v1/signup`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password: PASSWORD }),
  });
  assert.equal(res.status, 201);
  await client.login(email, PASSWORD);
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
