"""Installers other than the local sandbox (which lives in xci_cn.sandbox)."""
