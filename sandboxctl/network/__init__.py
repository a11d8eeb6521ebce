"""The network walls the supervisor holds: the proxy and the checks of socket calls."""
