// Command etcd is etcd's own main (etcdmain), built from the go.etcd.io/etcd/server module that
// the pinned k8s.io/kubernetes requires, for the test control plane.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
