"""Ansible through ansible-runner (runner.py is its only importer)."""
