#!/usr/bin/env bash
# Starts the local RabbitMQ, Redis and PostgreSQL that the test suite needs when they are
# installed but stopped, and stops again only those it started.
#   scripts/local-services.sh start   # records what it started in var/started-services
#   scripts/local-services.sh stop    # stops what `start` recorded
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
record=var/started-services

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 120); do listening "$port" && return 0; sleep 0.5; done
  echo "local-services: $name did not start listening on 127.0.0.1:$port" >&2
  return 1
}

start_one() {
  local name=$1 port=$2
  listening "$port" && return 0
  case $name in
    postgresql)
      command -v pg_ctlcluster >/dev/null || { echo "local-services: PostgreSQL is not installed (apt-get install postgresql)" >&2; return 1; }
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start ;;
    redis)
      command -v redis-server >/dev/null || { echo "local-services: Redis is not installed (apt-get install redis-server)" >&2; return 1; }
      mkdir -p /var/lib/redis /var/log/redis
      redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log ;;
    rabbitmq)
      command -v rabbitmq-server >/dev/null || { echo "local-services: RabbitMQ is not installed (apt-get install rabbitmq-server)" >&2; return 1; }
      rabbitmq-server -detached ;;
  esac
  wait_port "$name" "$port"
  echo "$name" >> "$record"
  echo "local-services: started $name"
}

stop_recorded() {
  [ -f "$record" ] || return 0
  while read -r name; do
    case $name in
      postgresql) pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main stop || true ;;
      redis) redis-cli -h 127.0.0.1 -p 6379 shutdown nosave || true ;;
      rabbitmq) rabbitmqctl stop || true ;;
    esac
    echo "local-services: stopped $name"
  done < "$record"
  rm -f "$record"
}

case ${1:-} in
  start)
    start_one postgresql 5432
    start_one redis 6379
    start_one rabbitmq 5672 ;;
  stop) stop_recorded ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
