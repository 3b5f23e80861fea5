"""Kubernetes adapters. client.py is the only importer of the kubernetes
package; everything else goes through it."""
