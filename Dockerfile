# campaign-pipeline as a container: built in one stage, shipped stripped on a slim Debian as a
# non-root user. The SQL files are in /app/sql; mount pipelines.yaml at /app/pipelines.yaml.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY sql ./sql
# No debug info and stripped symbols: the release binary with line tables is about 750 MB.
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin campaign-pipeline

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin campaign
COPY --from=build /src/target/release/campaign-pipeline /usr/local/bin/campaign-pipeline
COPY --chown=campaign sql /app/sql
WORKDIR /app
USER 10001
ENTRYPOINT ["campaign-pipeline", "--config", "/app/pipelines.yaml"]
CMD ["run", "--dashboard", "--listen", "0.0.0.0:8080"]
