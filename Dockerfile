# Tessera: multi-stage build. Dependencies compile in their own cached layer; the
# runtime image holds the binary, CA certificates (TLS to PostgreSQL) and nothing else.
# Checked by .ci/docker-check (a real build and a health check, with podman) and, on
# every CI run, by .ci/dockerfile-replay (this file's build stage replayed on the checkout).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first: this layer is rebuilt only when Cargo.toml or Cargo.lock change.
# Cargo refuses a manifest whose targets have no source file, so every bench, test and
# example Cargo.toml declares gets an empty stub, named from Cargo.toml itself: a renamed
# target cannot break this step again.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests examples \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for kind in bench:benches test:tests example:examples; do \
         for name in $(sed -n "/^\[\[${kind%%:*}\]\]/,/^\$/s/^name *= *\"\(.*\)\"/\1/p" Cargo.toml); do \
           echo 'fn main() {}' > "${kind#*:}/$name.rs"; \
         done; \
       done \
    && for path in $(sed -n 's/^path *= *"\(.*\)"/\1/p' Cargo.toml); do \
         mkdir -p "$(dirname "$path")" && echo 'fn main() {}' > "$path"; \
       done \
    && cargo build --release --locked --bin tessera \
    && rm -rf src
# The stubs stay: the real build below reads the same manifest.
COPY config config
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tessera

FROM debian:bookworm-slim
# ca-certificates: the platform CA store that TLS to PostgreSQL trusts (sslmode=verify-full
# against a managed database whose CA is public; otherwise name the CA in sslrootcert).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data tessera \
    && mkdir -p /data /keys && chown tessera /data /keys
COPY --from=build /src/target/release/tessera /usr/local/bin/tessera
USER tessera
# From /, the default database_url (sqlite://data/tessera.db) is the /data volume. It is
# not set here: an image default for TESSERA_DATABASE_URL would clash with an operator's
# TESSERA_DATABASE_URL_FILE.
WORKDIR /
# Configuration comes from the environment: TESSERA_<KEY> for every key of
# config/default.toml, and TESSERA_<KEY>_FILE for the secrets (Docker/Kubernetes secrets).
# config/default.toml. SQLite in the /data volume unless TESSERA_DATABASE_URL says otherwise.
# On 0.0.0.0 with no TESSERA_METRICS_TOKEN, /metrics is not on port 8080 but on
# 127.0.0.1:9090 inside the container (TESSERA_METRICS_LISTEN): set a token to scrape
# port 8080, or TESSERA_METRICS_LISTEN=0.0.0.0:9090 on a network only the scraper reaches.
# The healthcheck asks /healthz on port 8080, which stays open.
# TESSERA_ISSUER has no default here: on 0.0.0.0, serve refuses to start without it
# (the public URL clients use, every token's iss). With SQLite and no
# TESSERA_SECRET_KEY, the generated key goes to the /keys volume, not beside the
# database in /data: back them up apart (README "Production checklist", 6).
ENV TESSERA_LISTEN=0.0.0.0:8080 \
    TESSERA_LOG_FORMAT=json \
    TESSERA_SECRET_KEY_PATH=/keys/secret.key
EXPOSE 8080
VOLUME ["/data", "/keys"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/tessera", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve"]
