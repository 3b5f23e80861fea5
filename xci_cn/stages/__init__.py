"""Built-in stage types. Each is registered in setup.cfg's ``xci_cn.stages``
entry-point group and imported only when a scenario uses it."""
