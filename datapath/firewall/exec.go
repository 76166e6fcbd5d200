package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Runner runs a command. The firewall reaches iptables only through it:
// production runs the binaries on this host, tests run them inside a test
// namespace (nsenter) or record them.
type Runner interface {
	// Run runs name with args, feeding it stdin, and returns its standard
	// output. A command that ran and failed returns a *CommandError.
	Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)
}

// CommandError is a command that ran and exited with a non-zero status.
type CommandError struct {
	Cmd    string // the command line, for the message
	Code   int    // exit status
	Stderr string // what it printed on standard error, trimmed
}

func (e *CommandError) Error() string {
	if e.Stderr == "" {
		return fmt.Sprintf("%s: exit status %d", e.Cmd, e.Code)
	}
	return fmt.Sprintf("%s: exit status %d: %s", e.Cmd, e.Code, e.Stderr)
}

// ExecRunner runs commands on this host with os/exec, looked up in PATH.
type ExecRunner struct{}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok && ctx.Err() == nil {
		return stdout.Bytes(), &CommandError{
			Cmd:    strings.Join(append([]string{name}, args...), " "),
			Code:   ee.ExitCode(),
			Stderr: strings.TrimSpace(stderr.String()),
		}
	}
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("running %s: %w", name, err)
	}
	return stdout.Bytes(), nil
}

// Backend says which iptables variant the firewall drives. Rules of both
// variants apply to every packet, so twill must use the one dockerd uses,
// or a DROP of the other one still drops what twill accepts.
type Backend string

const (
	// BackendAuto picks the variant holding more rules on this host (nft
	// on a tie), as Kubernetes' iptables-wrapper does; when only the plain
	// iptables binary exists it is used as is.
	BackendAuto Backend = ""
	// BackendNFT runs iptables-nft, iptables-nft-restore.
	BackendNFT Backend = "nft"
	// BackendLegacy runs iptables-legacy, iptables-legacy-restore.
	BackendLegacy Backend = "legacy"
	// BackendPlain runs whatever iptables and iptables-restore are in PATH.
	BackendPlain Backend = "plain"
)

// binaries are the commands of one backend.
type binaries struct{ iptables, restore, save string }

func (b Backend) binaries() (binaries, error) {
	switch b {
	case BackendNFT:
		return binaries{"iptables-nft", "iptables-nft-restore", "iptables-nft-save"}, nil
	case BackendLegacy:
		return binaries{"iptables-legacy", "iptables-legacy-restore", "iptables-legacy-save"}, nil
	case BackendPlain:
		return binaries{"iptables", "iptables-restore", "iptables-save"}, nil
	}
	return binaries{}, fmt.Errorf("%w: iptables backend %q (want nft, legacy or plain)", ErrInvalidArgument, string(b))
}

// detectBackend counts the rules each variant holds and picks the busier
// one; nft wins a tie (a fresh host). Without the -nft/-legacy binaries
// the plain iptables is used.
func detectBackend(ctx context.Context, run Runner) (Backend, error) {
	nft, nftErr := countRules(ctx, run, "iptables-nft-save")
	legacy, legacyErr := countRules(ctx, run, "iptables-legacy-save")
	switch {
	case nftErr != nil && legacyErr != nil:
		if _, err := run.Run(ctx, nil, "iptables-save"); err != nil {
			return "", fmt.Errorf("detecting iptables backend (twill runs iptables-nft-restore or iptables-legacy-restore, found neither working): %w",
				errors.Join(nftErr, legacyErr, err))
		}
		return BackendPlain, nil
	case nftErr != nil:
		return BackendLegacy, nil
	case legacyErr != nil:
		return BackendNFT, nil
	case legacy > nft:
		return BackendLegacy, nil
	}
	return BackendNFT, nil
}

func countRules(ctx context.Context, run Runner, save string) (int, error) {
	out, err := run.Run(ctx, nil, save)
	if err != nil {
		return 0, err
	}
	n := 0
	for line := range strings.SplitSeq(string(out), "\n") {
		if strings.HasPrefix(line, "-A ") {
			n++
		}
	}
	return n, nil
}
