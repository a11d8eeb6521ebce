"""The network: the supervisor's proxy entry (CONNECT, HTTP, SOCKS5), its connections and address checks."""
