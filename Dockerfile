# redstuff: one static binary for the operator, nodes and gateways.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin redstuff \
 && cp target/x86_64-unknown-linux-musl/release/redstuff /redstuff

# Nothing but the binary; runs as a non-root user; needs no writable root
# filesystem (nodes write to their volume, gateways to their spool).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /redstuff /usr/local/bin/redstuff
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/redstuff"]
