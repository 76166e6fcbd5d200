// A real flanneld (v0.20.2, the last line with the udp backend twill speaks),
// built by scripts/flanneld.sh for the interoperability test. Its own module,
// so twill's go.mod carries none of flannel's dependencies; go.sum pins every
// module's hash.
module github.com/twill-net/twill/tools/flanneld

go 1.26

require github.com/flannel-io/flannel v0.20.2
