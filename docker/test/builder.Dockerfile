# docker/test/builder.Dockerfile: the build stage's image for scripts/docker-test,
# passed as BUILDER_IMAGE where rust:<version>-bookworm cannot be pulled. It has
# what the Rust image has beside the toolchain: a C compiler and libc headers
# (ring, mimalloc and glommio's liburing build C), make (docker/Dockerfile runs
# `make build`), git (glommio's build script calls `git submodule`; in a
# build context without .git that is a harmless no-op), CA roots (cargo fetches
# crates over TLS), the same CARGO_HOME.
# The toolchain is the host's own, mounted read-only at /usr/local/rust while
# the image is built (podman build -v SYSROOT:/usr/local/rust:ro), so no build
# downloads one and the image does not go stale when the host's toolchain moves.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
