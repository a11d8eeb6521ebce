"""The machine checks (`sandboxctl doctor`: doctor.py and one module per subject) and the escape
tests (`sandboxctl selftest`: selftest.py, its throwaway bed, its judge, and the probe it runs inside)."""
