package firewall_test

import (
	"github.com/twill-net/twill/datapath/firewall"
	"github.com/twill-net/twill/driver"
)

var _ driver.Firewall = (*firewall.Firewall)(nil)
