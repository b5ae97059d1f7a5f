# Stand-in for redis:7.4.2-alpine (deploy/compose.yaml's `redis`), for CI machines that reach no image
# registry. Built by tests/containers/run from a `debootstrap --variant=minbase bookworm` base. How it
# differs from the real image:
# - Debian's Redis 7.0 on glibc (the real image: Redis 7.4.2 on Alpine/musl);
# - the real image's redis-server is built with protected mode off, so a password-less server answers other
#   containers; Debian's is not, so the entrypoint adds `--protected-mode no` to a `redis-server` command;
# - runs as the `redis` user from the start (the real entrypoint drops to it with gosu).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
