// DPoP (RFC 9449): each request to the token endpoint and each API call carries a proof
// signed by a key pair whose private half cannot be exported, not even by this script.
// The server binds the session to that key, so a copied refresh or access token is
// useless without it, and the key never leaves this browser.
//
// The pair lives in IndexedDB (a structured clone keeps a CryptoKey, extractable or
// not), one per issuer and client for all of the app's tabs: the session is bound to
// one key and any tab may be the one that refreshes. Without IndexedDB (Node) there is
// no key: a key held in memory would die with the process, and with it the refresh
// token the app's storage callback kept.

/** Signs one proof: the method, the URL (query and fragment dropped), the latest nonce
 * the server gave, and for an API call the access token it goes with (its hash: ath). */
export type Sign = (htm: string, url: URL, nonce?: string, token?: string) => Promise<string>;

const utf8 = (s: string) => new TextEncoder().encode(s);
const b64u = (bytes: ArrayBuffer | Uint8Array) =>
  btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
const part = (json: object) => b64u(utf8(JSON.stringify(json)));

export async function signer(pair: CryptoKeyPair): Promise<Sign> {
  const { kty, crv, x, y } = await crypto.subtle.exportKey("jwk", pair.publicKey);
  // The public members only: a proof never carries the private key, whatever it is.
  const head = part({ typ: "dpop+jwt", alg: "ES256", jwk: { kty, crv, x, y } });
  return async (htm, url, nonce, token) => {
    const body = `${head}.${part({
      jti: crypto.randomUUID(),
      htm,
      htu: url.origin + url.pathname,
      iat: Math.floor(Date.now() / 1000),
      nonce,
      ath: token && b64u(await crypto.subtle.digest("SHA-256", utf8(token))),
    })}`;
    // WebCrypto's ECDSA signature is r || s, as JWS wants it.
    const sig = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, pair.privateKey, utf8(body));
    return `${body}.${b64u(sig)}`;
  };
}

const done = <T>(r: IDBRequest<T>) =>
  new Promise<T>((ok, no) => {
    r.onsuccess = () => ok(r.result);
    r.onerror = () => no(r.error);
  });

/** This browser's key for `id`, made on first use; null where there is none to keep. */
export async function browserKey(id: string): Promise<Sign | null> {
  if (typeof indexedDB === "undefined" || !globalThis.crypto?.subtle) return null;
  try {
    const open = indexedDB.open("tessera-dpop", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("keys");
    const db = await done(open);
    const keys = (mode: IDBTransactionMode) => db.transaction("keys", mode).objectStore("keys");
    let pair: CryptoKeyPair | undefined = await done(keys("readonly").get(id));
    if (!pair) {
      const made = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
      // add, not put: when tabs race, the first key stored wins and the others read it.
      pair = await done(keys("readwrite").add(made, id)).then(
        () => made,
        () => done(keys("readonly").get(id)),
      );
    }
    db.close();
    return await signer(pair!);
  } catch {
    // IndexedDB refused (storage blocked, some private modes): Bearer, as in Node.
    return null;
  }
}
