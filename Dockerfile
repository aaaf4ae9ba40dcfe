# syntax=docker/dockerfile:1.7
# The wsgate image: `docker build -t wsgate:0.1.0 .` from the repository root.
#
# Build stage: glibc toolchain (Debian 12). The crate uses rustls with ring (no OpenSSL), so
# the only runtime needs are glibc and libgcc, which the distroless "cc" base carries.
# Why not a fully static musl binary: musl's allocator is markedly slower under the many small
# allocations of thousands of concurrent connections, and the gateway is a proxy.
#
# Dependency caching: BuildKit cache mounts keep the cargo registry and the target directory
# between builds, so a source change recompiles only wsgate itself. (A "build the manifest
# with a stub main first" layer breaks as soon as Cargo.toml names a bench or test target.)
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin wsgate \
    && install -D -m 0755 target/release/wsgate /out/wsgate

# Runtime: no shell, no package manager; glibc, libgcc, CA certificates and a nonroot user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wsgate /usr/local/bin/wsgate
# Numeric, so the kubelet can verify runAsNonRoot without resolving a user name.
USER 65532:65532
# 8080: ws:// and http:// traffic. 9090: /healthz, /readyz, /metrics.
EXPOSE 8080 8443 9090
ENTRYPOINT ["/usr/local/bin/wsgate"]
CMD ["run"]
