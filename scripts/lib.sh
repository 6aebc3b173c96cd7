# Shared helpers of the project's scripts: install what is missing from
# Debian's packages and start what is not running. Sourced, not run.

# apt-get update runs at most once per script run.
_apt_updated=0

# ensure_packages PKG...: installs the Debian packages that are missing.
ensure_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    if [ "$_apt_updated" -eq 0 ]; then
        $sudo apt-get update -qq
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ensure_rust: cargo must be there (rustup's toolchain; not a Debian package here).
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || {
        echo "cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
        exit 1
    }
}

# ensure_rabbitmq: the system RabbitMQ answers on 127.0.0.1:5672, started if needed.
ensure_rabbitmq() {
    ensure_packages rabbitmq-server
    if rabbitmq_port_open; then
        return 0
    fi
    echo "==> starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    local i
    for i in $(seq 1 60); do
        rabbitmq_port_open && return 0
        sleep 1
    done
    echo "RabbitMQ did not start on 127.0.0.1:5672" >&2
    exit 1
}

rabbitmq_port_open() {
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

# ensure_mariadb: a local MariaDB answering root through its socket.
ensure_mariadb() {
    ensure_packages mariadb-server mariadb-client
    if mysql -uroot -e 'SELECT 1' >/dev/null 2>&1; then
        return 0
    fi
    echo "==> starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >/dev/null 2>&1 || true
    local i
    for i in $(seq 1 60); do
        mysql -uroot -e 'SELECT 1' >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "MariaDB did not start" >&2
    exit 1
}
