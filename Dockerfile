# cdc in a container: build with the Rust toolchain, run on a slim Debian.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      cmake libcurl4-openssl-dev libssl-dev libsasl2-dev libzstd-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY tests tests
COPY schemas schemas
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 libzstd1 libcurl4 \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /var/lib/cdc
COPY --from=build /src/target/release/cdc /usr/local/bin/cdc
VOLUME /var/lib/cdc
ENTRYPOINT ["cdc"]
CMD ["--help"]
