#!/bin/sh
# Start Redis with redis.conf (beside this script) and the password from the REDIS_PASSWORD secret.
# docker-entrypoint.sh (the redis image's) owns /data for the redis user and drops root.
# Extra arguments go last, so they win over redis.conf (the tests move dir, port and bind that way).
set -eu
if [ -z "${REDIS_PASSWORD:-}" ]; then
    echo "REDIS_PASSWORD is not set: fly secrets set REDIS_PASSWORD=... --app <this Redis app>" >&2
    exit 2
fi
exec docker-entrypoint.sh redis-server "$(dirname "$0")/redis.conf" --requirepass "$REDIS_PASSWORD" "$@"
