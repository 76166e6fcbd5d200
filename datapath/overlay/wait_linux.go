package overlay

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// readyWait is the function a device's WaitRead passes to RawConn.Read.
// The netpoller clears its readiness flag just before the first call, so
// that call checks the fd with a zero-timeout poll(2), which reads
// nothing: a packet queued before the check is seen, one queued after it
// sets the flag and ends the wait. The second call, after the wait, ends
// it. Any error is left for the next read to report.
type readyWait struct {
	waited bool
	pfd    unix.PollFd
	zero   unix.Timespec
}

func (w *readyWait) reset() { w.waited = false }

func (w *readyWait) check(fd uintptr) bool {
	if w.waited {
		return true
	}
	w.waited = true
	w.pfd = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	n, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&w.pfd)), 1, uintptr(unsafe.Pointer(&w.zero)), 0, 0, 0)
	return e != 0 || n > 0
}
