//go:build !linux

package firewall

func defaultConntrack() Conntrack { return nil }
