//go:build linux

package links_test

import (
	"github.com/twill-net/twill/datapath/links"
	"github.com/twill-net/twill/driver"
)

var _ driver.Links = (*links.Links)(nil)
