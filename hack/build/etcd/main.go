// Command etcd is etcd's own server entry point, built as a module of its own so the version can be pinned.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
