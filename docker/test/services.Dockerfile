# docker/test/services.Dockerfile: one image that stands in for redis:7 and
# nginx:stable in scripts/docker-test where those cannot be pulled: Debian's
# redis-server and nginx on bookworm-slim. compose.yml gives both services
# their command, so one image serves as either. What the compose files rely on
# from the real images is copied: an `nginx` user (nginx.conf's `user nginx;`)
# and /data as Redis's working directory.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server nginx \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nginx \
 && mkdir -p /data
WORKDIR /data
