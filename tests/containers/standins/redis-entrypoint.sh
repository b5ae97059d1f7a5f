#!/bin/sh
# redis-server with protected mode off, as the real redis image builds it (see redis.Dockerfile).
set -e
if [ "$1" = "redis-server" ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
