"""The local XCI sandbox: a real Kubernetes control plane (kube-apiserver,
controller-manager, scheduler, etcd) with kwok-simulated nodes.

binaries.py builds and caches the upstream binaries from Go modules;
cluster.py drives kwokctl and reports status. Bring-up itself runs through
the Ansible playbooks in playbooks/ (sandbox-up.yml, sandbox-down.yml)."""
