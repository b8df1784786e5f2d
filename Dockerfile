# Multi-stage build: dependencies are compiled in their own cached layer.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/load.rs \
    && cargo build --release --locked && rm -rf src benches
COPY config config
COPY migrations migrations
COPY src src
COPY benches benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tessera

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data tessera \
    && mkdir -p /data && chown tessera /data
COPY --from=build /src/target/release/tessera /usr/local/bin/tessera
USER tessera
WORKDIR /data
# Configuration comes from the environment (see config/default.toml for every key).
ENV TESSERA_LISTEN=0.0.0.0:8080 \
    TESSERA_DATABASE_URL=sqlite:///data/tessera.db
EXPOSE 8080
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve"]
