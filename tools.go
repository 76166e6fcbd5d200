//go:build tools

// Package tools pins the modules twill builds on before every package imports them.
package tools
import (
 _ "go.etcd.io/etcd/server/v3/embed"
 _ "go.etcd.io/etcd/client/v3"
 _ "github.com/vishvananda/netlink"
 _ "golang.zx2c4.com/wireguard/tun"
 _ "github.com/docker/go-plugins-helpers/sdk"
 _ "github.com/docker/go-plugins-helpers/network"
 _ "github.com/docker/go-plugins-helpers/ipam"
 _ "github.com/prometheus/client_golang/prometheus"
 _ "golang.org/x/sys/unix"
 _ "go.uber.org/goleak"
)
