"""The network: the supervisor's proxy entry (CONNECT, HTTP, SOCKS5), its connections and address checks,
and the answers to the sandbox's own socket calls (sockets.py: UNIX sockets, direct connections)."""
