# Sourced by tools/install_nvcc.sh and tools/install_torch.sh: makes sure python3 can create a
# virtual environment (installing Debian's python3-venv when root), or exits with what to install.
if ! command -v python3 >/dev/null 2>&1; then
    echo "error: python3 is needed to install the pip packages" >&2
    exit 1
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
    else
        echo "error: python3's venv module is missing; install python3-venv" >&2
        exit 1
    fi
fi
