"""Where nfguard keeps things on a host, each written once here: the
config file, the pinned maps and the daemon's control socket (the version
is nfguard.__version__)."""

CONFIG_PATH = "/etc/nfguard/nfguard.yaml"
PIN_DIR = "/sys/fs/bpf/nfguard"
SOCKET = "/run/nfguard/nfguard.sock"
