package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	netapi "github.com/docker/go-plugins-helpers/network"

	"github.com/twill-net/twill/driver"
	"github.com/twill-net/twill/ipam"
)

// NetworkDriver is the network driver the server forwards NetworkDriver.*
// calls to (driver.Driver). Methods get the request's context.
type NetworkDriver interface {
	CreateNetwork(ctx context.Context, req *netapi.CreateNetworkRequest) error
	DeleteNetwork(ctx context.Context, req *netapi.DeleteNetworkRequest) error
	CreateEndpoint(ctx context.Context, req *netapi.CreateEndpointRequest) (*netapi.CreateEndpointResponse, error)
	DeleteEndpoint(ctx context.Context, req *netapi.DeleteEndpointRequest) error
	EndpointOperInfo(ctx context.Context, req *netapi.InfoRequest) (map[string]any, error)
	Join(ctx context.Context, req *netapi.JoinRequest) (*netapi.JoinResponse, error)
	Leave(ctx context.Context, req *netapi.LeaveRequest) error
	ProgramExternalConnectivity(ctx context.Context, req *netapi.ProgramExternalConnectivityRequest) error
	RevokeExternalConnectivity(ctx context.Context, req *netapi.RevokeExternalConnectivityRequest) error
}

// IPAMDriver is the IPAM the server forwards IpamDriver.* calls to
// (ipam.IPAM).
type IPAMDriver interface {
	RequestPool(ctx context.Context, req *ipamapi.RequestPoolRequest) (*ipamapi.RequestPoolResponse, error)
	ReleasePool(ctx context.Context, req *ipamapi.ReleasePoolRequest) error
	RequestAddress(ctx context.Context, req *ipamapi.RequestAddressRequest) (*ipamapi.RequestAddressResponse, error)
	ReleaseAddress(ctx context.Context, req *ipamapi.ReleaseAddressRequest) error
}

var (
	_ NetworkDriver = (*driver.Driver)(nil)
	_ IPAMDriver    = (*ipam.IPAM)(nil)
)

// call handles one method: body is the request's JSON (possibly empty).
// nd and id are nil for static methods.
type call func(ctx context.Context, nd NetworkDriver, id IPAMDriver, body []byte) (any, error)

type route struct {
	static bool // answered without backends, also while starting
	fn     call
}

// empty is the success answer of methods that return nothing.
var empty = struct{}{}

// activation is Plugin.Activate's answer: one plugin, both APIs.
type activation struct {
	Implements []string
}

// infoResponse is EndpointOperInfo's answer; Docker decodes Value into
// map[string]interface{}, so values need not be strings.
type infoResponse struct {
	Value map[string]any
}

func static(v any) route {
	return route{static: true, fn: func(context.Context, NetworkDriver, IPAMDriver, []byte) (any, error) { return v, nil }}
}

// decode reads Docker's JSON into a new T. An empty or null body is the zero
// request: Docker sends those for the capability calls.
func decode[T any](body []byte) (*T, error) {
	v := new(T)
	if len(bytes.TrimSpace(body)) == 0 {
		return v, nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return v, nil
}

func netCall[T any](fn func(context.Context, NetworkDriver, *T) (any, error)) route {
	return route{fn: func(ctx context.Context, nd NetworkDriver, _ IPAMDriver, body []byte) (any, error) {
		req, err := decode[T](body)
		if err != nil {
			return nil, err
		}
		return fn(ctx, nd, req)
	}}
}

func ipamCall[T any](fn func(context.Context, IPAMDriver, *T) (any, error)) route {
	return route{fn: func(ctx context.Context, _ NetworkDriver, id IPAMDriver, body []byte) (any, error) {
		req, err := decode[T](body)
		if err != nil {
			return nil, err
		}
		return fn(ctx, id, req)
	}}
}

// done turns an error-only result into an answer.
func done(err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return empty, nil
}

// answer returns resp, or the error; it keeps a typed nil out of the JSON.
func answer[R any](resp *R, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return resp, nil
}

var routes = map[string]route{
	"Plugin.Activate":                    static(activation{Implements: []string{"NetworkDriver", "IpamDriver"}}),
	"NetworkDriver.GetCapabilities":      static(driver.GetCapabilities()),
	"IpamDriver.GetCapabilities":         static(ipam.GetCapabilities()),
	"IpamDriver.GetDefaultAddressSpaces": static(ipam.GetDefaultAddressSpaces()),
	// Discovery events only matter to drivers with a control plane of
	// their own; twill's peers come from etcd.
	"NetworkDriver.DiscoverNew":    static(empty),
	"NetworkDriver.DiscoverDelete": static(empty),
	// Allocate/FreeNetwork are sent only for swarm-scoped networks on a
	// manager; twill networks are local-scoped.
	"NetworkDriver.AllocateNetwork": {static: true, fn: func(context.Context, NetworkDriver, IPAMDriver, []byte) (any, error) {
		return nil, errors.New("twill networks are created on each host with docker network create, not by a swarm manager")
	}},
	"NetworkDriver.FreeNetwork": static(empty),

	"NetworkDriver.CreateNetwork": netCall(func(ctx context.Context, d NetworkDriver, r *netapi.CreateNetworkRequest) (any, error) {
		return done(d.CreateNetwork(ctx, r))
	}),
	"NetworkDriver.DeleteNetwork": netCall(func(ctx context.Context, d NetworkDriver, r *netapi.DeleteNetworkRequest) (any, error) {
		return done(d.DeleteNetwork(ctx, r))
	}),
	"NetworkDriver.CreateEndpoint": netCall(func(ctx context.Context, d NetworkDriver, r *netapi.CreateEndpointRequest) (any, error) {
		return answer(d.CreateEndpoint(ctx, r))
	}),
	"NetworkDriver.DeleteEndpoint": netCall(func(ctx context.Context, d NetworkDriver, r *netapi.DeleteEndpointRequest) (any, error) {
		return done(d.DeleteEndpoint(ctx, r))
	}),
	"NetworkDriver.EndpointOperInfo": netCall(func(ctx context.Context, d NetworkDriver, r *netapi.InfoRequest) (any, error) {
		v, err := d.EndpointOperInfo(ctx, r)
		if err != nil {
			return nil, err
		}
		return infoResponse{Value: v}, nil
	}),
	"NetworkDriver.Join": netCall(func(ctx context.Context, d NetworkDriver, r *netapi.JoinRequest) (any, error) {
		return answer(d.Join(ctx, r))
	}),
	"NetworkDriver.Leave": netCall(func(ctx context.Context, d NetworkDriver, r *netapi.LeaveRequest) (any, error) {
		return done(d.Leave(ctx, r))
	}),
	"NetworkDriver.ProgramExternalConnectivity": netCall(func(ctx context.Context, d NetworkDriver, r *netapi.ProgramExternalConnectivityRequest) (any, error) {
		return done(d.ProgramExternalConnectivity(ctx, r))
	}),
	"NetworkDriver.RevokeExternalConnectivity": netCall(func(ctx context.Context, d NetworkDriver, r *netapi.RevokeExternalConnectivityRequest) (any, error) {
		return done(d.RevokeExternalConnectivity(ctx, r))
	}),

	"IpamDriver.RequestPool": ipamCall(func(ctx context.Context, p IPAMDriver, r *ipamapi.RequestPoolRequest) (any, error) {
		return answer(p.RequestPool(ctx, r))
	}),
	"IpamDriver.ReleasePool": ipamCall(func(ctx context.Context, p IPAMDriver, r *ipamapi.ReleasePoolRequest) (any, error) {
		return done(p.ReleasePool(ctx, r))
	}),
	"IpamDriver.RequestAddress": ipamCall(func(ctx context.Context, p IPAMDriver, r *ipamapi.RequestAddressRequest) (any, error) {
		return answer(p.RequestAddress(ctx, r))
	}),
	"IpamDriver.ReleaseAddress": ipamCall(func(ctx context.Context, p IPAMDriver, r *ipamapi.ReleaseAddressRequest) (any, error) {
		return done(p.ReleaseAddress(ctx, r))
	}),
}

// errorResponse is the {"Err": ...} body Docker reads on failure.
type errorResponse struct {
	Err string
}

// ServeHTTP answers one plugin call.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	method := strings.TrimPrefix(r.URL.Path, "/")
	resp, status, err := s.handle(w, r, method)
	d := time.Since(start)
	if s.observer != nil {
		label := method
		if _, known := routes[method]; !known {
			label = "unknown" // keeps metric labels bounded whatever clients send
		}
		s.observer(label, d, err)
	}
	w.Header().Set("Content-Type", ContentType)
	if err != nil {
		s.log.Warn("plugin call failed", "method", method, "status", status, "duration", d, "err", err)
		w.WriteHeader(status)
		msg := err.Error()
		if !strings.HasPrefix(msg, "twill") {
			msg = "twill: " + msg // Docker's message names the method, not the plugin
		}
		json.NewEncoder(w).Encode(errorResponse{Err: msg})
		return
	}
	s.log.Debug("plugin call", "method", method, "duration", d)
	if err := json.NewEncoder(w).Encode(resp); err != nil {
		s.log.Debug("writing plugin answer", "method", method, "err", err)
	}
}

// handle runs the method and returns its answer, or an error and the HTTP
// status to send it with.
func (s *Server) handle(w http.ResponseWriter, r *http.Request, method string) (any, int, error) {
	rt, ok := routes[method]
	if !ok {
		return nil, http.StatusNotFound, fmt.Errorf("%w %q: this is twill, a NetworkDriver and IpamDriver", ErrUnknownCall, method)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("%s: %w (limit %d bytes)", method, ErrTooLarge, MaxBodyBytes)
		}
		return nil, http.StatusBadRequest, fmt.Errorf("%s: reading request: %w", method, err)
	}
	var nd NetworkDriver
	var id IPAMDriver
	if !rt.static {
		if nd, id, err = s.backends(r.Context()); err != nil {
			return nil, http.StatusInternalServerError, err
		}
	}
	resp, err := rt.fn(r.Context(), nd, id, body)
	if errors.Is(err, ErrBadRequest) {
		return nil, http.StatusBadRequest, fmt.Errorf("%s: %w", method, err)
	}
	if err != nil {
		return nil, http.StatusInternalServerError, err
	}
	return resp, http.StatusOK, nil
}
