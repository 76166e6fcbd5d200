#!/usr/bin/env bash
# run.sh up|down: the multi-host compose example. web.yml runs on every daemon
# in DOCKER_HOST_WEB (space-separated: one web replica per host), client.yml on
# DOCKER_HOST_CLIENT; all join the twill network TWILL_NETWORK_NAME (default
# "twill"), which must exist on each. Nothing is passed between the hosts: the
# client finds every web replica by name through twill's resolver.
set -euo pipefail
cd "$(dirname "$0")"
: "${DOCKER_HOST_WEB:?set DOCKER_HOST_WEB (e.g. ssh://host-a, or \"ssh://host-a ssh://host-c\")}"
: "${DOCKER_HOST_CLIENT:?set DOCKER_HOST_CLIENT}"
P=${COMPOSE_PROJECT_NAME:-twill-demo}
# COMPOSE: the compose command, `docker compose` (the CLI plugin, Compose v2 and
# later) or `docker-compose` (Compose 1.29, Debian's); the plugin when it is there.
if [ -z "${COMPOSE:-}" ]; then
	if "${DOCKER:-docker}" compose version >/dev/null 2>&1; then COMPOSE="${DOCKER:-docker} compose"; else COMPOSE=docker-compose; fi
fi
# shellcheck disable=SC2086 # COMPOSE may be two words
web() { local h=$1; shift; DOCKER_HOST=$h $COMPOSE -p "$P" -f web.yml "$@"; }
# shellcheck disable=SC2086
client() { DOCKER_HOST=$DOCKER_HOST_CLIENT $COMPOSE -p "$P" -f client.yml "$@"; }
case ${1:-} in
up)
	for h in $DOCKER_HOST_WEB; do web "$h" up -d; done
	client up -d
	echo "client runs on $DOCKER_HOST_CLIENT; its log: DOCKER_HOST=$DOCKER_HOST_CLIENT $COMPOSE -p $P -f client.yml logs client"
	;;
down)
	client down
	for h in $DOCKER_HOST_WEB; do web "$h" down; done
	;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
