// A client for Tessera: keeps an access token, refreshes it silently, and does so once
// per browser however many tabs and parallel calls want it at the same moment.
//
// In a browser the refresh token lives in an HttpOnly cookie (token_delivery=cookie)
// that no script here can read; in Node or a native app a storage callback keeps it.
// The access token stays in memory and is shared between tabs over a BroadcastChannel.
//
// Where the browser can keep a key (IndexedDB and WebCrypto), every token request and
// API call carries a DPoP proof (dpop.ts) and the session is bound to that key.

import { browserKey, type Sign } from "./dpop.js";
import { elect, type Leadership } from "./leader.js";

export interface TokenStorage {
  get(): string | null | Promise<string | null>;
  set(refreshToken: string | null): void | Promise<void>;
}

export interface TesseraClientOptions {
  issuer: string;
  clientId?: string;
  /** Keeps the refresh token (Node, native apps). Absent: the HttpOnly cookie. */
  storage?: TokenStorage;
  /** Channel and lock name shared by this app's tabs; false: this instance alone. */
  channel?: string | false;
  fetch?: typeof fetch;
}

/** Why a session ended: a logout here or in another tab, or the server refused it. */
export type EndReason = "logout" | "refused";

export interface TokenResponse {
  access_token: string;
  token_type: string;
  expires_in: number;
  scope: string;
}

/** The server answered with an OAuth or API error. */
export class TesseraError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
  ) {
    super(message || code);
  }
}

/** There is no session (never logged in, logged out, or refused by the server). */
export class SessionEndedError extends Error {
  constructor() {
    super("no session");
  }
}

export interface TesseraClient {
  login(username: string, password: string, scope?: string): Promise<TokenResponse>;
  logout(scope?: "local" | "others" | "global"): Promise<void>;
  /** fetch with the access token; refreshes before expiry and on a 401, retries once. */
  fetch(input: string | URL, init?: RequestInit): Promise<Response>;
  /** A live access token, refreshed if needed. */
  accessToken(): Promise<string>;
  /** When the current access token expires (ms since the epoch), if there is one. */
  expiresAt(): number | null;
  onSessionEnd(listener: (reason: EndReason) => void): () => void;
  close(): void;
}

type Access = { token: string; exp: number; life: number; dpop: boolean };
type Message =
  | { t: "need"; stale: string | null }
  | { t: "token"; access: Access }
  | { t: "ended"; stale: string | null; reason: EndReason }
  | { t: "fail"; stale: string | null };
type Waiter = { stale: string | null; ok: (a: Access) => void; no: (e: Error) => void };

const ASK_MS = 2000;

export function createTesseraClient(options: TesseraClientOptions): TesseraClient {
  const issuer = options.issuer.replace(/\/+$/, "");
  const clientId = options.clientId ?? "app";
  const storage = options.storage;
  const http = options.fetch ?? globalThis.fetch.bind(globalThis);
  const name =
    options.channel ?? (storage ? false : `tessera:${issuer}:${clientId}`);
  const channel =
    name && typeof BroadcastChannel !== "undefined" ? new BroadcastChannel(name) : null;
  (channel as { unref?: () => void } | null)?.unref?.();
  const lead: Leadership = elect(`${name}:refresh`, Math.random().toString(36).slice(2), channel);

  let access: Access | null = null;
  let ended = false;
  let inflight: Promise<Access> | null = null;
  let key: Promise<Sign | null> | undefined;
  // The latest DPoP-Nonce heard from each origin: the token endpoint's serves the
  // issuer's own API routes too, which take the same nonces.
  const nonces = new Map<string, string>();
  const waiters = new Set<Waiter>();
  const listeners = new Set<(reason: EndReason) => void>();

  const post = (m: Message) => channel?.postMessage(m);
  // Refresh a quarter of the lifetime (at most 30 s) before expiry: no call ever
  // leaves with a token about to lapse in flight.
  const fresh = (a: Access | null, stale?: string | null): boolean =>
    !!a && a.token !== stale && Date.now() < a.exp - Math.min(30_000, a.life / 4);

  // Messages between tabs may arrive late or out of order: never trade a token for an
  // older one, and wake a waiter only with a live token other than the one it gave up.
  function adopt(a: Access) {
    const had = access as Access | null;
    if (had && had.exp > a.exp) return;
    access = a;
    ended = false;
    if (!fresh(a)) return;
    for (const w of waiters) {
      if (w.stale !== a.token) {
        waiters.delete(w);
        w.ok(a);
      }
    }
  }

  function end(reason: EndReason, stale: string | null, tell: boolean) {
    const was = !ended;
    access = null;
    ended = true;
    for (const w of waiters) w.no(new SessionEndedError());
    waiters.clear();
    if (tell) post({ t: "ended", stale, reason });
    if (was) for (const l of listeners) l(reason);
  }

  // One request, with a proof when this browser has a key: to the token endpoint
  // (no access token) or an API with a DPoP-bound one. Asked for a nonce, it goes once
  // more with it; the refusal spent nothing.
  async function signed(input: string | URL, init: RequestInit, a?: Access): Promise<Response> {
    const sign = a && !a.dpop ? null : await (key ??= browserKey(`${issuer} ${clientId}`));
    const url = new URL(input, globalThis.location?.href);
    const m = init.method ?? "GET";
    // fetch upper-cases these methods on the wire and sends any other as written.
    const htm = /^(delete|get|head|options|post|put)$/i.test(m) ? m.toUpperCase() : m;
    const go = async () => {
      const headers = new Headers(init.headers);
      if (a) headers.set("Authorization", `${a.dpop ? "DPoP" : "Bearer"} ${a.token}`);
      if (sign) headers.set("DPoP", await sign(htm, url, nonces.get(url.origin), a?.token));
      const res = await http(input, { ...init, headers });
      const nonce = res.headers.get("DPoP-Nonce");
      if (nonce) nonces.set(url.origin, nonce);
      return [res, nonce] as const;
    };
    const [res, nonce] = await go();
    const asked =
      sign && nonce &&
      (a
        ? res.status === 401 && /use_dpop_nonce/.test(res.headers.get("WWW-Authenticate") ?? "")
        : res.status === 400 && (await res.clone().json().catch(() => ({}))).error === "use_dpop_nonce");
    return asked ? (await go())[0] : res;
  }

  const send = (path: string, body: URLSearchParams) =>
    signed(issuer + path, { method: "POST", body, credentials: "include", headers: { "X-Tessera-CSRF": "1" } });

  async function granted(res: Response): Promise<[TokenResponse & { refresh_token?: string }, Access]> {
    const json = await res.json().catch(() => ({}));
    if (!res.ok) throw new TesseraError(json.error ?? "http_" + res.status, json.error_description ?? "", res.status);
    if (storage) await storage.set(json.refresh_token ?? null);
    const life = json.expires_in * 1000;
    const a = { token: json.access_token, exp: Date.now() + life, life, dpop: /^dpop$/i.test(json.token_type) };
    adopt(a);
    post({ t: "token", access: a });
    return [json, a];
  }

  // The one place a refresh token is spent. A lost response (network error, 5xx) is
  // retried once with the same token: the server's grace window answers with the
  // successor the first attempt created, so the session survives.
  async function refreshHere(stale: string | null): Promise<Access> {
    const body = new URLSearchParams({ grant_type: "refresh_token", client_id: clientId });
    if (storage) {
      const saved = await storage.get();
      if (!saved) {
        end("refused", stale, false);
        throw new SessionEndedError();
      }
      body.set("refresh_token", saved);
    }
    let res: Response | null = null;
    try {
      res = await send("/oauth/token", body);
    } catch {
      // retried below
    }
    if (!res || res.status >= 500) res = await send("/oauth/token", body);
    try {
      return (await granted(res))[1];
    } catch (e) {
      if (e instanceof TesseraError && e.status === 400) {
        // invalid_grant (spent, revoked, expired, reused, bound to another key),
        // invalid_dpop_proof (a bound session and no usable key here) or no cookie:
        // logged out, for good, until the next login. Nothing retries it: no loop.
        if (storage) await storage.set(null);
        end("refused", stale, true);
        throw new SessionEndedError();
      }
      throw e;
    }
  }

  // A follower asks the leader, and asks again if it stays silent (it may just have
  // closed); after three tries it refreshes itself and the grace window covers overlap.
  async function askLeader(stale: string | null): Promise<Access> {
    for (let i = 0; i < 3 && !lead.isLeader(); i++) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const got = await new Promise<Access | null>((ok, no) => {
        const w: Waiter = { stale, ok, no };
        waiters.add(w);
        timer = setTimeout(() => (waiters.delete(w), ok(null)), ASK_MS);
        post({ t: "need", stale });
      }).finally(() => clearTimeout(timer));
      if (got) return got;
    }
    return refreshHere(stale);
  }

  async function token(stale: string | null = null): Promise<Access> {
    const now = access as Access | null;
    if (now && fresh(now, stale)) return now;
    if (ended) throw new SessionEndedError();
    inflight ??= (async () => {
      await lead.ready;
      const old = (access as Access | null)?.token ?? stale;
      return channel && !lead.isLeader() ? askLeader(old) : refreshHere(old);
    })().finally(() => (inflight = null));
    return inflight;
  }

  channel?.addEventListener("message", (e: MessageEvent<Message>) => {
    const m = e.data;
    if (m.t === "token") adopt(m.access);
    else if (m.t === "ended") {
      // Only a session this tab shares ends: not a login made meanwhile.
      if (m.reason === "logout" || !access || access.token === m.stale) end(m.reason, m.stale, false);
    } else if (m.t === "fail") {
      for (const w of waiters) w.no(new Error("refresh failed"));
      waiters.clear();
    } else if (m.t === "need" && lead.isLeader()) {
      token(m.stale).then(
        () => { const a = access as Access | null; if (a) post({ t: "token", access: a }); },
        (err) =>
          post(err instanceof SessionEndedError ? { t: "ended", stale: m.stale, reason: "refused" } : { t: "fail", stale: m.stale }),
      );
    }
  });

  return {
    async login(username, password, scope) {
      const body = new URLSearchParams({ grant_type: "password", username, password, client_id: clientId });
      if (!storage) body.set("token_delivery", "cookie");
      if (scope) body.set("scope", scope);
      const { refresh_token: _, ...rest } = (await granted(await send("/oauth/token", body)))[0];
      return rest;
    },

    async logout(scope = "local") {
      const a = await token().catch(() => null);
      if (a) await signed(`${issuer}/v1/logout?scope=${scope}`, { method: "POST", credentials: "include" }, a);
      if (scope === "others") return;
      if (storage) await storage.set(null);
      end("logout", a?.token ?? null, true);
    },

    async fetch(input, init = {}) {
      const first = await token();
      const res = await signed(input, init, first);
      if (res.status !== 401) return res;
      return signed(input, init, await token(first.token));
    },

    accessToken: () => token().then((a) => a.token),
    expiresAt: () => access?.exp ?? null,
    onSessionEnd(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    close() {
      lead.close();
      channel?.close();
    },
  };
}
