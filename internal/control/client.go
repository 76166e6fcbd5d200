package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// ErrNoDaemon means nothing answers on the control socket.
var ErrNoDaemon = errors.New("no twilld answers")

// Client talks to a twilld control socket.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{path: path, hc: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// Get fetches one view (status, leases, peers, networks, endpoints) into v.
func (c *Client) Get(ctx context.Context, view string, v any) error {
	return c.do(ctx, http.MethodGet, view, v)
}

// Leave asks the daemon to give its leases back.
func (c *Client) Leave(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "leave", nil)
}

func (c *Client) do(ctx context.Context, method, view string, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://twilld/"+view, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("twilld control socket %s: %w (%w: is twilld running? as root? set --socket or TWILL_CONTROL_SOCKET)", c.path, err, ErrNoDaemon)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading %s from twilld: %w", view, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("twilld: %s: %s", view, e.Error)
		}
		return fmt.Errorf("twilld: %s: %s", view, resp.Status)
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decoding %s from twilld: %w", view, err)
	}
	return nil
}
