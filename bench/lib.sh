# Shell helpers the bench scripts source: ports on loopback.

# Prints a TCP port free on 127.0.0.1 now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# Waits until something accepts connections on 127.0.0.1:$1 (10 s at most).
wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench: nothing listens on 127.0.0.1:$1" >&2
    return 1
}
