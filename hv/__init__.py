"""The hypervisor side: guest introspection, the syscall interceptor, the synthetic guest."""
