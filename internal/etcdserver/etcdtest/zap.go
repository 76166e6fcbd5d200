package etcdtest

import "go.uber.org/zap"

// quietZap keeps the etcd client from printing its retries into test output.
func quietZap() *zap.Logger { return zap.NewNop() }
