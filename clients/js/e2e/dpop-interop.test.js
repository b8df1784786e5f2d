// DPoP against an independent implementation, on the real server binary:
// (a) proofs made by jose (ES256 and EdDSA) are accepted by Tessera, and its cnf.jkt is
//     jose's RFC 7638 thumbprint;
// (b) proofs made by this client's own code (src/dpop.ts, with a non-extractable
//     WebCrypto key, as in a browser) verify with jose and carry the right claims; the
//     browser test checks the proofs the built client sends from Chromium the same way.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomUUID } from "node:crypto";
import {
  SignJWT, exportJWK, generateKeyPair, calculateJwkThumbprint, jwtVerify, EmbeddedJWK, decodeJwt,
} from "jose";
import { startServer, signUp, PASSWORD } from "./server.mjs";
import { signer } from "../dist/dpop.js";

let plain, nonced;

before(async () => {
  plain = await startServer();
  nonced = await startServer({ TESSERA_DPOP_REQUIRE_NONCE: "true" });
});
after(() => {
  plain?.stop();
  nonced?.stop();
});

const ath = (token) => createHash("sha256").update(token).digest("base64url");

/** A proof made by jose alone: SignJWT with the public key in the `jwk` header. */
async function joseProof({ privateKey, publicKey }, alg, htm, htu, extra = {}) {
  const jwk = await exportJWK(publicKey);
  return new SignJWT({ htm, htu, jti: randomUUID(), ...extra })
    .setProtectedHeader({ typ: "dpop+jwt", alg, jwk })
    .setIssuedAt()
    .sign(privateKey);
}

async function token(issuer, form, proof) {
  const res = await fetch(`${issuer}/oauth/token`, {
    method: "POST",
    headers: proof ? { DPoP: proof } : {},
    body: new URLSearchParams(form),
  });
  return { status: res.status, nonce: res.headers.get("dpop-nonce"), body: await res.json() };
}

async function me(issuer, auth, proof) {
  const res = await fetch(`${issuer}/v1/me`, { headers: { Authorization: auth, ...(proof ? { DPoP: proof } : {}) } });
  return { status: res.status, nonce: res.headers.get("dpop-nonce"), challenge: res.headers.get("www-authenticate") };
}

test("the metadata names the proof algorithms", async () => {
  const meta = await (await fetch(`${plain.issuer}/.well-known/oauth-authorization-server`)).json();
  assert.deepEqual(meta.dpop_signing_alg_values_supported, ["ES256", "EdDSA"]);
});

for (const alg of ["ES256", "EdDSA"]) {
  test(`jose ${alg} proofs are accepted: password grant, refresh, /v1/me; cnf.jkt is jose's thumbprint`, async () => {
    const { issuer } = plain;
    const key = await generateKeyPair(alg);
    const jkt = await calculateJwkThumbprint(await exportJWK(key.publicKey));
    const username = await signUp(issuer);
    const tokenUrl = `${issuer}/oauth/token`;

    const login = await token(issuer, { grant_type: "password", username, password: PASSWORD, client_id: "app" },
      await joseProof(key, alg, "POST", tokenUrl));
    assert.equal(login.status, 200, JSON.stringify(login.body));
    assert.equal(login.body.token_type, "DPoP");
    assert.equal(decodeJwt(login.body.access_token).cnf?.jkt, jkt);

    const refresh = await token(issuer, { grant_type: "refresh_token", refresh_token: login.body.refresh_token },
      await joseProof(key, alg, "POST", tokenUrl));
    assert.equal(refresh.status, 200, JSON.stringify(refresh.body));
    assert.equal(refresh.body.token_type, "DPoP");
    assert.equal(decodeJwt(refresh.body.access_token).cnf?.jkt, jkt);

    const at = refresh.body.access_token;
    const ok = await me(issuer, `DPoP ${at}`, await joseProof(key, alg, "GET", `${issuer}/v1/me`, { ath: ath(at) }));
    assert.equal(ok.status, 200);
    // The same token without its proof, as Bearer, or with a proof for another token: refused.
    const bearer = await me(issuer, `Bearer ${at}`);
    const noProof = await me(issuer, `DPoP ${at}`);
    const wrongAth = await me(issuer, `DPoP ${at}`, await joseProof(key, alg, "GET", `${issuer}/v1/me`, { ath: ath("other") }));
    assert.deepEqual([bearer.status, noProof.status, wrongAth.status], [401, 401, 401]);
    assert.match(bearer.challenge, /^DPoP .*error="invalid_token"/);
    assert.match(noProof.challenge, /^DPoP .*error="invalid_dpop_proof"/);
    assert.match(wrongAth.challenge, /^DPoP .*error="invalid_dpop_proof"/);
    console.log(
      `interop jose ${alg}: password grant ${login.status} ${login.body.token_type}, cnf.jkt = jose thumbprint, ` +
        `refresh ${refresh.status}, /v1/me ${ok.status}; as Bearer ${bearer.status}, no proof ${noProof.status}, wrong ath ${wrongAth.status}`,
    );
  });
}

test("jose proofs and a server that requires nonces: use_dpop_nonce, then accepted with the nonce", async () => {
  const { issuer } = nonced;
  const key = await generateKeyPair("ES256");
  const username = await signUp(issuer);
  const tokenUrl = `${issuer}/oauth/token`;
  const form = { grant_type: "password", username, password: PASSWORD };
  const asked = await token(issuer, form, await joseProof(key, "ES256", "POST", tokenUrl));
  assert.equal(asked.status, 400);
  assert.equal(asked.body.error, "use_dpop_nonce");
  assert.ok(asked.nonce, "DPoP-Nonce comes with the challenge");
  const login = await token(issuer, form, await joseProof(key, "ES256", "POST", tokenUrl, { nonce: asked.nonce }));
  assert.equal(login.status, 200, JSON.stringify(login.body));
  assert.ok(login.nonce, "a success carries a fresh nonce too");

  const at = login.body.access_token;
  const meUrl = `${issuer}/v1/me`;
  const first = await me(issuer, `DPoP ${at}`, await joseProof(key, "ES256", "GET", meUrl, { ath: ath(at) }));
  let api = first;
  if (first.status === 401) {
    assert.match(first.challenge ?? "", /use_dpop_nonce/);
    assert.ok(first.nonce);
    api = await me(issuer, `DPoP ${at}`, await joseProof(key, "ES256", "GET", meUrl, { ath: ath(at), nonce: first.nonce }));
  }
  assert.equal(api.status, 200);
  console.log(
    `interop jose nonce: token endpoint without nonce ${asked.status} ${asked.body.error}, with it ${login.status}; ` +
      `/v1/me without nonce ${first.status}${first.status === 401 ? ` (${first.challenge})` : ""}, then ${api.status}`,
  );
});

test("proofs made by this client's code verify with jose, carry the right claims, and the server takes them", async () => {
  const { issuer } = plain;
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
  const sign = await signer(pair);
  const jkt = await calculateJwkThumbprint(await crypto.subtle.exportKey("jwk", pair.publicKey));
  const verify = async (proof, htm, htu, accessToken) => {
    const { payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, { typ: "dpop+jwt", algorithms: ["ES256"] });
    assert.deepEqual(Object.keys(protectedHeader).sort(), ["alg", "jwk", "typ"]);
    assert.deepEqual(Object.keys(protectedHeader.jwk).sort(), ["crv", "kty", "x", "y"], "public members only");
    assert.equal(await calculateJwkThumbprint(protectedHeader.jwk), jkt);
    assert.equal(payload.htm, htm);
    assert.equal(payload.htu, htu);
    assert.ok(Math.abs(payload.iat - Date.now() / 1000) <= 5, "iat is now (whole seconds, checked just after signing)");
    assert.match(payload.jti, /^[0-9a-f-]{36}$/);
    assert.equal(payload.ath, accessToken && ath(accessToken));
    return payload;
  };

  const tokenUrl = `${issuer}/oauth/token`;
  const proof = await sign("POST", new URL(tokenUrl));
  const claims = await verify(proof, "POST", tokenUrl);
  const again = await sign("POST", new URL(tokenUrl), "n-123");
  assert.notEqual((await verify(again, "POST", tokenUrl)).jti, claims.jti, "a new jti each time");
  assert.equal(decodeJwt(again).nonce, "n-123");

  const username = await signUp(issuer);
  const login = await token(issuer, { grant_type: "password", username, password: PASSWORD }, proof);
  assert.equal(login.status, 200, JSON.stringify(login.body));
  assert.equal(login.body.token_type, "DPoP");
  assert.equal(decodeJwt(login.body.access_token).cnf?.jkt, jkt);
  const at = login.body.access_token;
  const apiProof = await sign("GET", new URL(`${issuer}/v1/me?x=1#y`), undefined, at);
  await verify(apiProof, "GET", `${issuer}/v1/me`, at);
  const ok = await me(issuer, `DPoP ${at}`, apiProof);
  assert.equal(ok.status, 200);
  // A replayed proof (same jti) is refused.
  const replay = await me(issuer, `DPoP ${at}`, apiProof);
  assert.equal(replay.status, 401);
  console.log(
    `interop tessera proofs: jose jwtVerify(EmbeddedJWK, typ dpop+jwt) ok; htm/htu/iat/jti/ath/nonce as sent; ` +
      `server: password grant ${login.status} ${login.body.token_type} (cnf.jkt = jose thumbprint), /v1/me ${ok.status}, replayed proof ${replay.status}`,
  );
});
