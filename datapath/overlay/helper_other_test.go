//go:build !linux

package overlay

func helperMain() bool { return false }
