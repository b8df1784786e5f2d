# Tessera: multi-stage build. Dependencies compile in their own cached layer; the
# runtime image holds the binary and nothing else it does not need.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first: this layer is rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests/api \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in load verify propagation; do echo 'fn main() {}' > benches/$b.rs; done \
    && echo '' > tests/api/main.rs \
    && cargo build --release --locked --bin tessera \
    && rm -rf src benches tests
COPY config config
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tessera

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data tessera \
    && mkdir -p /data && chown tessera /data
COPY --from=build /src/target/release/tessera /usr/local/bin/tessera
USER tessera
WORKDIR /data
# Configuration comes from the environment: TESSERA_<KEY> for every key of
# config/default.toml. SQLite in the /data volume unless TESSERA_DATABASE_URL says otherwise.
# On 0.0.0.0 with no TESSERA_METRICS_TOKEN, /metrics is not on port 8080 but on
# 127.0.0.1:9090 inside the container (TESSERA_METRICS_LISTEN): set a token to scrape
# port 8080, or TESSERA_METRICS_LISTEN=0.0.0.0:9090 on a network only the scraper reaches.
# The healthcheck asks /healthz on port 8080, which stays open.
ENV TESSERA_LISTEN=0.0.0.0:8080 \
    TESSERA_DATABASE_URL=sqlite:///data/tessera.db \
    TESSERA_LOG_FORMAT=json
EXPOSE 8080
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/tessera", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve"]
