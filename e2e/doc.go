// Package e2e runs twill as a managed Docker plugin on a testbed of real Docker
// hosts (scripts/testbed.sh: network namespaces, each with its own dockerd, a
// real etcd and a registry on an underlay bridge) and checks what a user sees.
//
// The tests run only with TWILL_E2E=1, as root: `make e2e` (scripts/e2e.sh)
// builds the plugin and runs them. Without TWILL_E2E every test skips, so
// `go test ./...` stays root-free. TWILL_E2E_KEEP=1 leaves the testbed up
// afterwards; TWILL_E2E_REUSE=1 uses a testbed that is already up.
package e2e
