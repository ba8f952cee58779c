// Wrapper module for building etcd (hack/build-control-plane.sh); the version comes from hack/versions.env.
module rayop.dev/hack/etcd

go 1.24.0

require go.etcd.io/etcd/server/v3 v3.6.8
