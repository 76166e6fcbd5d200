#!/usr/bin/env bash
# run.sh up|down: the two-host compose example. web.yml runs on the daemon at
# DOCKER_HOST_WEB, client.yml on the one at DOCKER_HOST_CLIENT; both join the
# twill network TWILL_NETWORK_NAME (default "twill"), which must exist on both.
set -euo pipefail
cd "$(dirname "$0")"
: "${DOCKER_HOST_WEB:?set DOCKER_HOST_WEB (e.g. ssh://host-a or unix:///run/docker.sock)}"
: "${DOCKER_HOST_CLIENT:?set DOCKER_HOST_CLIENT}"
P=${COMPOSE_PROJECT_NAME:-twill-demo}
net=${TWILL_NETWORK_NAME:-twill}
# COMPOSE: the compose command, `docker compose` (the CLI plugin, Compose v2 and
# later) or `docker-compose` (Compose 1.29, Debian's); the plugin when it is there.
if [ -z "${COMPOSE:-}" ]; then
	if "${DOCKER:-docker}" compose version >/dev/null 2>&1; then COMPOSE="${DOCKER:-docker} compose"; else COMPOSE=docker-compose; fi
fi
# shellcheck disable=SC2086 # COMPOSE may be two words
web() { DOCKER_HOST=$DOCKER_HOST_WEB $COMPOSE -p "$P" -f web.yml "$@"; }
# shellcheck disable=SC2086
client() { DOCKER_HOST=$DOCKER_HOST_CLIENT $COMPOSE -p "$P" -f client.yml "$@"; }
case ${1:-} in
up)
	web up -d
	id=$(web ps -q web)
	WEB_IP=$(DOCKER_HOST=$DOCKER_HOST_WEB "${DOCKER:-docker}" inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$id")
	[ -n "$WEB_IP" ] || { echo "web has no address on network $net" >&2; exit 1; }
	echo "web runs at $WEB_IP (on $DOCKER_HOST_WEB)"
	export WEB_IP
	client up -d
	echo "client runs on $DOCKER_HOST_CLIENT; its log: DOCKER_HOST=$DOCKER_HOST_CLIENT $COMPOSE -p $P -f client.yml logs client"
	;;
down)
	WEB_IP=none client down
	web down
	;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
