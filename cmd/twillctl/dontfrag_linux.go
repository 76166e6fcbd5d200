package main

import "golang.org/x/sys/unix"

func setDontFragment(fd int) {
	unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
}
