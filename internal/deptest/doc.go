// Package deptest keeps twill's package structure as STYLE.md wants it: its
// tests check that dependencies point one way (cmd wires everything; driver and
// ipam see the kernel and etcd only through interfaces; the datapath never sees
// etcd or the plugin API) and that every package says what it is for.
package deptest
