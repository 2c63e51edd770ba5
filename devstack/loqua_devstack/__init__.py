"""Local stack of real components (kube-apiserver + etcd, livekit-server, reference Loqua API)."""
