// Starts the real server binary ($TESSERA_BIN, else `tessera` on the PATH) on a free
// loopback port with a fresh SQLite database, for the end-to-end tests.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes, randomUUID } from "node:crypto";

export const PASSWORD = "correct horse battery staple";

const freePort = () =>
  new Promise((ok) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });

/** Resolves once /healthz answers: { issuer, stop() }. `env` adds to or overrides the defaults. */
export async function startServer(env = {}) {
  const port = await freePort();
  const issuer = `http://localhost:${port}`;
  const dir = mkdtempSync(join(tmpdir(), "tessera-e2e-"));
  const child = spawn(process.env.TESSERA_BIN ?? "tessera", ["serve"], {
    env: {
      ...process.env,
      TESSERA_LISTEN: `127.0.0.1:${port}`,
      TESSERA_DATABASE_URL: `sqlite://${dir}/tessera.db`,
      TESSERA_SECRET_KEY: randomBytes(32).toString("base64"),
      TESSERA_ISSUER: issuer,
      TESSERA_COOKIE_SECURE: "false",
      TESSERA_LOG: "warn",
      ...env,
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${issuer}/healthz`)).ok) break;
    } catch {}
    if (i > 100 || child.exitCode !== null) throw new Error("the server did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  return { issuer, stop: () => child.kill("SIGTERM") };
}

/** Signs up a new user on `issuer`; returns the email. */
export async function signUp(issuer) {
  const email = `${randomUUID()}@example.com`;
  const res = await fetch(`${issuer}/v1/signup`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password: PASSWORD }),
  });
  if (res.status !== 201) throw new Error(`signup: ${res.status}`);
  return email;
}
