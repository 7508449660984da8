# What the bash scripts share; sourced, not run.

# median: the median of the numbers on stdin, one a line: the middle one, or the mean of the two
# middle ones of an even count (the same statistic as scripts/lib/bench.py's median).
median() {
    sort -g | awk '{a[NR] = $1} END {if (NR == 0) exit 1; print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on (as of now).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
