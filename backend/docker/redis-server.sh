#!/bin/sh
# Redis of the `ha` profile, with the password of the compose secret named by REDIS_PASSWORD_FILE as its
# `requirepass`. The password reaches redis-server on its standard input (`redis-server - ARGS...` reads
# configuration lines there), so it is in no command line (`ps`, `docker inspect`) and no file. Then the
# image's own entry point runs, as in the image: it starts redis-server as the redis user.
set -eu
password="$(cat "$REDIS_PASSWORD_FILE")" || { echo "redis-server.sh: cannot read $REDIS_PASSWORD_FILE (REDIS_PASSWORD_FILE)" >&2; exit 2; }
if [ -z "$password" ]; then
    echo "redis-server.sh: $REDIS_PASSWORD_FILE (REDIS_PASSWORD_FILE) is empty; write a password into it" >&2
    exit 2
fi
# In a double-quoted value of Redis's configuration a backslash and a double quote are escaped.
quoted="$(printf '%s' "$password" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
exec docker-entrypoint.sh redis-server - "$@" <<CONFIG
requirepass "$quoted"
CONFIG
