# syntax=docker/dockerfile:1
#
# creatio-proxy container image: a statically linked binary on an empty (scratch) base.
#
#   docker build -t creatio-proxy .
#   docker run --rm -p 127.0.0.1:5080:5080 \
#     -e CREATIO_PROXY_CREATIO__URL=https://mycompany.creatio.com \
#     -e CREATIO_PROXY_AUTH__USERNAME=Integration -e CREATIO_PROXY_AUTH__PASSWORD=... \
#     -e CREATIO_PROXY_SERVER__ALLOW_UNAUTHENTICATED_REMOTE=true creatio-proxy
#
# docs/deployment.md ("Container image") explains the choices; deploy/test-image.sh builds the runtime stage
# without a registry and checks it (it supplies the binary in place of the builder stage, so
# keep the runtime stage's COPY --from=builder source at /out/creatio-proxy).

# --- builder: the release binary, linked statically against glibc ---------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# crt-static makes a self-contained executable, so the runtime stage needs no libc. --target
# keeps RUSTFLAGS away from build scripts and proc macros, which must stay dynamic.
# TLS roots are compiled in (webpki-roots), so no CA bundle is copied.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    triple="$(uname -m)-unknown-linux-gnu" \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --release --locked --target "$triple" \
    && install -D -m 0755 "target/$triple/release/creatio-proxy" /out/creatio-proxy

# --- runtime: the binary, a user table, name-service rules and a default config -----------
FROM scratch AS runtime
# passwd/group name uid 65532; nsswitch.conf limits host lookups to /etc/hosts and DNS, the
# two sources a static glibc has built in.
COPY deploy/image/rootfs/ /
COPY deploy/image/config.toml /etc/creatio-proxy/config.toml
COPY --from=builder /out/creatio-proxy /usr/local/bin/creatio-proxy

LABEL org.opencontainers.image.title="creatio-proxy" \
      org.opencontainers.image.description="Sidecar that logs in to Creatio once and forwards plain HTTP with the session attached" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

# In the image, `run` refuses uid 0 (`docker run --user 0` exits 64); this user owns nothing
# in the image and needs nothing writable. The environment wins over any mounted config.
ENV CREATIO_PROXY_SERVER__ALLOW_ROOT=false
USER 65532:65532
# 5080: clients; 5090: /healthz, /readyz, /metrics.
EXPOSE 5080 5090
# SIGTERM lets in-flight requests finish (server.shutdown_grace, 30 s by default): give
# `docker stop -t` at least that much.
STOPSIGNAL SIGTERM
# Exec form: the image has no shell. `health` exits 0 on a 2xx answer, 1 otherwise.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/creatio-proxy", "health", "--url", "http://127.0.0.1:5090/healthz", "--timeout", "3s"]

ENTRYPOINT ["/usr/local/bin/creatio-proxy"]
CMD ["run", "--config", "/etc/creatio-proxy/config.toml"]
