// Serves the demo page and the built client on their own origin, as an app would be
// served apart from the authorization server. Usage: node demo/serve.mjs [port]
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const files = {
  "/": ["index.html", "text/html"],
  "/demo": ["index.html", "text/html"],
  "/tessera.js": ["../dist/index.js", "text/javascript"],
  "/leader.js": ["../dist/leader.js", "text/javascript"],
  "/dpop.js": ["../dist/dpop.js", "text/javascript"],
};

export function serveDemo(port = 0) {
  const server = createServer(async (req, res) => {
    const file = files[new URL(req.url, "http://x").pathname];
    if (!file) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": file[1], "cache-control": "no-store" });
    res.end(await readFile(here(file[0])));
  });
  return new Promise((ok) => server.listen(port, "127.0.0.1", () => ok(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const server = await serveDemo(Number(process.argv[2] ?? 5173));
  console.log(`demo on http://localhost:${server.address().port}/demo?issuer=http://localhost:8080`);
}
