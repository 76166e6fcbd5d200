package kernel

// The generated twill_bpfel.go and twill_bpfel.o are committed, so building
// needs no clang; `go generate ./datapath/kernel/` (clang, llvm and
// libbpf-dev from Debian) makes them again, and CI fails when they differ.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -type counter twill twill.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
