#!/bin/sh
# The upstream image's entry point, as far as the stack uses it: options alone are given to redis-server;
# `redis-server ...` started as root runs as the redis user, owner of the data folder (the working directory);
# any other command runs as it is.
set -eu
case "${1:-}" in
    -*) set -- redis-server "$@" ;;
esac
if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups -- "$@"
fi
exec "$@"
