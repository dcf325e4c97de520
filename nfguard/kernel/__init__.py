"""The kernel side: compile and load the BPF programs (program), attach
them (attach), libbpf through ctypes (libbpf), host prerequisites (host)."""
