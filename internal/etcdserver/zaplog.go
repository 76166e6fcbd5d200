package etcdserver

import (
	"context"
	"log/slog"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapBridge gives the embedded etcd its own quiet logger: etcd's errors
// become slog warnings (etcd is a helper inside twilld, its problems surface
// through the client), its warnings become debug lines, its info chatter is
// dropped. After setClosing everything is debug: a clean Close logs nothing
// at info or above.
type zapBridge struct {
	log     *slog.Logger
	closing atomic.Bool
}

func newZapBridge(log *slog.Logger) *zapBridge { return &zapBridge{log: log.With("component", "etcd")} }

func (b *zapBridge) setClosing() { b.closing.Store(true) }

func (b *zapBridge) logger() *zap.Logger { return zap.New(&bridgeCore{b: b}) }

// level maps a zap level to the slog level twill logs it at.
func (b *zapBridge) level(l zapcore.Level) slog.Level {
	switch {
	case b.closing.Load():
		return slog.LevelDebug
	case l >= zapcore.ErrorLevel:
		return slog.LevelWarn
	case l == zapcore.WarnLevel:
		return slog.LevelDebug
	default:
		return slog.LevelDebug - 4
	}
}

type bridgeCore struct {
	b      *zapBridge
	fields []zapcore.Field
}

var _ zapcore.Core = (*bridgeCore)(nil)

func (c *bridgeCore) Enabled(l zapcore.Level) bool {
	return c.b.log.Enabled(context.Background(), c.b.level(l))
}

func (c *bridgeCore) With(fs []zapcore.Field) zapcore.Core {
	return &bridgeCore{b: c.b, fields: append(append([]zapcore.Field(nil), c.fields...), fs...)}
}

func (c *bridgeCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *bridgeCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	args := make([]any, 0, 2*len(enc.Fields))
	for k, v := range enc.Fields {
		args = append(args, k, v)
	}
	c.b.log.Log(context.Background(), c.b.level(e.Level), "etcd: "+e.Message, args...)
	return nil
}

func (c *bridgeCore) Sync() error { return nil }
