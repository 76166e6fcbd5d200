package firewall

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// request is one change waiting to be written.
type request struct {
	ctx context.Context
	// edit applies the change to d. It reports whether d changed; when it
	// fails it has left d alone.
	edit func(d *desired) (bool, error)
	done chan error // buffered: written once
}

// change applies edit to the state and writes the result to the kernel.
// Changes made concurrently are written together (group commit): each
// caller queues its edit and then waits for the write lock; whoever gets it
// writes every edit queued by then in one iptables-restore, so the others
// find their answer ready. A write costs tens of milliseconds whatever its
// size, so a burst of container starts costs a few writes, not one each.
// If a shared write fails, each edit is retried alone, so one bad change
// does not fail its neighbours.
func (f *Firewall) change(ctx context.Context, edit func(d *desired) (bool, error)) error {
	r := &request{ctx: ctx, edit: edit, done: make(chan error, 1)}
	f.mu.Lock()
	f.queue = append(f.queue, r)
	f.mu.Unlock()

	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	select {
	case err := <-r.done: // written by an earlier holder of the lock
		return err
	default:
	}

	f.mu.Lock()
	batch := f.queue
	f.queue = nil
	work := f.state.clone()
	var edited []*request
	changed := false
	for _, q := range batch {
		c, err := q.edit(&work)
		if err != nil {
			q.done <- err
			continue
		}
		changed = changed || c
		edited = append(edited, q)
	}
	f.mu.Unlock()

	var err error
	if changed {
		err = f.write(ctx, work)
	}
	switch {
	case err == nil:
		f.mu.Lock()
		f.state = work
		f.mu.Unlock()
		for _, q := range edited {
			q.done <- nil
		}
	case len(edited) == 1:
		edited[0].done <- err
	default:
		f.log.Debug("shared firewall write failed, writing changes one by one", "changes", len(edited), "err", err)
		for _, q := range edited {
			q.done <- f.writeOne(q)
		}
	}
	return <-r.done
}

// writeOne applies and writes a single edit; writeMu is held.
func (f *Firewall) writeOne(q *request) error {
	f.mu.Lock()
	work := f.state.clone()
	changed, err := q.edit(&work)
	f.mu.Unlock()
	if err != nil || !changed {
		return err
	}
	if err := f.write(q.ctx, work); err != nil {
		return err
	}
	f.mu.Lock()
	f.state = work
	f.mu.Unlock()
	return nil
}

// write loads d into our chains with one iptables-restore --noflush and,
// unless they were verified lately, makes sure the jumps to them exist.
// writeMu is held.
func (f *Firewall) write(ctx context.Context, d desired) error {
	start := f.now()
	text := Render(f.render(d))
	if _, err := f.run.Run(ctx, []byte(text), f.bin.restore, "-w", "--noflush"); err != nil {
		return restoreError(text, err)
	}
	f.log.Debug("firewall written", "networks", len(d.networks), "portmaps", len(d.portMaps), "took", f.now().Sub(start))
	if !f.jumpsSeen.IsZero() && f.now().Sub(f.jumpsSeen) < jumpRecheck {
		return nil
	}
	for _, j := range jumps {
		check := append([]string{"-w", "-t", j.table, "-C", j.chain}, j.spec...)
		_, err := f.run.Run(ctx, nil, f.bin.iptables, check...)
		if err == nil {
			continue
		}
		if !isExit(err, 1) {
			return fmt.Errorf("checking jump %q: %w", jumpText(j), err)
		}
		insert := append([]string{"-w", "-t", j.table, "-I", j.chain, "1"}, j.spec...)
		if _, err := f.run.Run(ctx, nil, f.bin.iptables, insert...); err != nil {
			return fmt.Errorf("inserting jump %q: %w", jumpText(j), err)
		}
		f.log.Info("firewall jump inserted", "table", j.table, "chain", j.chain, "target", j.spec[len(j.spec)-1])
	}
	f.jumpsSeen = f.now()
	return nil
}

var restoreLine = regexp.MustCompile(`line:? (\d+)`)

// restoreError names the rule iptables-restore refused, found by the line
// number it reports ("Error occurred at line: 4", "line 4 failed").
func restoreError(input string, err error) error {
	ce, ok := errors.AsType[*CommandError](err)
	if !ok {
		return fmt.Errorf("iptables-restore: %w", err)
	}
	m := restoreLine.FindStringSubmatch(ce.Stderr)
	if m == nil {
		return fmt.Errorf("iptables-restore: %w", err)
	}
	n, _ := strconv.Atoi(m[1])
	lines := strings.Split(input, "\n")
	if n < 1 || n > len(lines) {
		return fmt.Errorf("iptables-restore: %w", err)
	}
	table := ""
	for _, l := range lines[:n] {
		if strings.HasPrefix(l, "*") {
			table = l[1:]
		}
	}
	return fmt.Errorf("iptables-restore: rule %q in table %s: %w", lines[n-1], table, err)
}

func isExit(err error, code int) bool {
	ce, ok := errors.AsType[*CommandError](err)
	return ok && ce.Code == code
}

func jumpText(j jump) string {
	return "-t " + j.table + " -A " + j.chain + " " + strings.Join(j.spec, " ")
}
