"""The pure-Python twins of the native components: the same API, the same results."""
