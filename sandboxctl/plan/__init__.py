"""Policy + invocation + host facts -> Plan: pure data that every later stage executes."""
