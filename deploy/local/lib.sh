# shellcheck shell=bash
# Shared by deploy/local/stack and the console tool wrappers: pinned versions,
# cache and run locations, fetching from Maven Central, and the Kafka tools classpath.
# Sourced, never run.
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file

# Pinned versions (checked against Maven Central's metadata with mvn).
KAFKA_VERSION=4.4.0
SCALA_VERSION=2.13
LOG4J_VERSION=2.25.5
SLF4J_VERSION=2.0.17
APICURIO_VERSION=3.0.9

CACHE=${ORDER_MILESTONES_CACHE:-$HOME/.cache/order-milestones}
RUN=${ORDER_MILESTONES_RUN:-$HOME/.local/state/order-milestones/stack}
M2=$CACHE/m2
KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME/libs
APICURIO_HOME=$CACHE/apicurio-registry-$APICURIO_VERSION

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
REGISTRY_PORT=${REGISTRY_PORT:-8081}


die() {
    echo "error: $*" >&2
    exit 1
}

say() {
    echo "stack: $*" >&2
}

need_java() {
    command -v java >/dev/null 2>&1 ||
        die "java not found: Kafka $KAFKA_VERSION and Apicurio $APICURIO_VERSION need Java 17+ (Debian: apt-get install openjdk-17-jre-headless)"
    local v
    v=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    [[ ${v%%.*} =~ ^[0-9]+$ && ${v%%.*} -ge 17 ]] ||
        die "java $v is too old: Kafka $KAFKA_VERSION and Apicurio $APICURIO_VERSION need Java 17+ (Debian: apt-get install openjdk-17-jre-headless)"
}

need_mvn() {
    command -v mvn >/dev/null 2>&1 ||
        die "mvn not found: it fetches Kafka and Apicurio from Maven Central into $CACHE (Debian: apt-get install maven)"
}

# mvn in batch mode against the project's own local repository; output to a log file.
run_mvn() {
    local log=$1
    shift
    mkdir -p "$CACHE/logs"
    mvn -B -ntp -Dmaven.repo.local="$M2" "$@" >"$log" 2>&1
}

# Kafka broker + console tools jars, with runtime dependencies, into $KAFKA_LIBS.
fetch_kafka() {
    [[ -f $KAFKA_LIBS/.complete ]] && return 0
    need_mvn
    need_java
    say "fetching Kafka $KAFKA_VERSION (kafka_$SCALA_VERSION, kafka-tools, log4j2) with mvn into $KAFKA_HOME"
    local pomdir=$CACHE/poms/kafka-$KAFKA_VERSION log=$CACHE/logs/mvn-kafka-$KAFKA_VERSION.log
    mkdir -p "$pomdir"
    cat >"$pomdir/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.order-milestones</groupId>
  <artifactId>kafka-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_$SCALA_VERSION</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- The Kafka POMs leave logging out; the distribution ships log4j2 behind slf4j. -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
    rm -rf "$KAFKA_LIBS.tmp"
    run_mvn "$log" -f "$pomdir/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" ||
        die "fetching Kafka $KAFKA_VERSION from Maven Central with mvn failed: see $log (network access to Maven Central is needed once; later runs use $M2)"
    rm -rf "$KAFKA_LIBS"
    mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
    touch "$KAFKA_LIBS/.complete"
}

# The Apicurio Registry Quarkus app, unpacked into $APICURIO_HOME.
fetch_apicurio() {
    [[ -f $APICURIO_HOME/.complete ]] && return 0
    need_mvn
    need_java
    say "fetching Apicurio Registry $APICURIO_VERSION with mvn into $APICURIO_HOME"
    local log=$CACHE/logs/mvn-apicurio-$APICURIO_VERSION.log tmp=$APICURIO_HOME.tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    run_mvn "$log" dependency:copy \
        -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
        -DoutputDirectory="$tmp/dist" ||
        die "fetching Apicurio Registry $APICURIO_VERSION from Maven Central with mvn failed: see $log (network access to Maven Central is needed once; later runs use $M2)"
    tar -xzf "$tmp"/dist/*.tar.gz -C "$tmp" || die "unpacking the Apicurio Registry $APICURIO_VERSION archive in $tmp failed"
    rm -rf "$tmp/dist"
    [[ -n $(APICURIO_HOME=$tmp apicurio_jar) ]] ||
        die "the Apicurio Registry $APICURIO_VERSION archive has no quarkus-run.jar nor *-runner.jar (see $tmp)"
    rm -rf "$APICURIO_HOME"
    mv "$tmp" "$APICURIO_HOME"
    touch "$APICURIO_HOME/.complete"
}

# 3.1+ unpacks to quarkus-run.jar (fast-jar); 3.0.x to apicurio-registry-app-*-runner.jar.
apicurio_jar() {
    find "$APICURIO_HOME" -maxdepth 2 \( -name quarkus-run.jar -o -name 'apicurio-registry-app-*-runner.jar' \) -print -quit
}

# log4j2 configs: the broker logs to $RUN/logs/kafka.log, the tools log warnings to stderr.
write_log4j_configs() {
    mkdir -p "$KAFKA_HOME/config"
    cat >"$KAFKA_HOME/config/log4j2.properties" <<'L4J'
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/kafka.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
L4J
    cat >"$KAFKA_HOME/config/tools-log4j2.properties" <<'L4J'
status = warn
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = stderr
L4J
}

# Runs a Kafka tool's main class on the cached classpath, arguments passed through.
kafka_tool() {
    local main=$1
    shift
    need_java
    fetch_kafka
    [[ -f $KAFKA_HOME/config/tools-log4j2.properties ]] || write_log4j_configs
    exec java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_HOME/config/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" "$main" "$@"
}

# Like kafka_tool, but adds --bootstrap-server for the local stack when the user gave none.
kafka_client_tool() {
    local main=$1 a
    shift
    for a in "$@"; do
        case $a in
        --bootstrap-server | --bootstrap-server=* | --bootstrap-controller | --bootstrap-controller=*)
            kafka_tool "$main" "$@"
            ;;
        esac
    done
    kafka_tool "$main" --bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@"
}

# A service configuration for the local stack, to stdout, as the benchmarks run it: application
# id $1 (its input topic $1-events, its outputs named after it, instance $1-0), its state in
# $2, and with $3 (avro or json; default: the configuration's defaults, Avro) the format of
# its input and output records. HTTP on 127.0.0.1:18080, so one such service at a time.
local_config() {
    local id=$1 state=$2 format=${3:-}
    cat <<TOML
[application]
id = "$id"
instance_id = "$id-0"
[kafka]
bootstrap_servers = "127.0.0.1:$KAFKA_PORT"
[schema_registry]
url = "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"
[topics]
inputs = ["$id-events"]
changes = "$id-milestones"
status = "$id-status"
${format:+input_format = \"$format\"
output_format = \"$format\"}
[state]
dir = "$state"
[http]
listen = "127.0.0.1:18080"
[auth]
hs256_secret = "local benchmark secret: long enough for HS256, used only by these runs"
TOML
}

# A benchmark's service configuration $1 under another application id $2 (so a fresh group,
# fresh output topics named after it, and nothing restored) with its state in $3, to stdout.
config_as() {
    local source=$1 id=$2 state=$3
    sed -e "s/^id = .*/id = \"$id\"/" \
        -e "s/^changes = .*/changes = \"$id-milestones\"/" \
        -e "s/^status = .*/status = \"$id-status\"/" \
        -e "s#^dir = .*#dir = \"$state\"#" "$source"
}

# Deletes the topics whose names match the Java regex $1 from the local broker (nothing to
# delete is not an error). The benchmarks drop what they no longer need this way: a day of
# runs otherwise keeps tens of gigabytes of topics until `stack down`.
drop_topics() {
    "$(dirname "${BASH_SOURCE[0]}")/kafka-topics" --delete --topic "$1" >/dev/null 2>&1 || true
}

# Prints how many records the `milestones generate` runs whose logs are given produced, in all.
generated_records() {
    cat "$@" | sed -n 's/^generate: \([0-9]*\) records.*/\1/p' | awk '{s += $1} END {print s + 0}'
}

# Prints how many transactions the service at LISTEN committed and the time its commits
# spent in each step (`milestones_commit_phase_seconds`): "N commits: prepare X s, ...".
commit_phases() {
    curl -fsS "http://$1/metrics" | awk '
        /^milestones_transaction_commit_seconds_count/ {n = $2}
        /^milestones_commit_phase_seconds_sum/ {
            match($1, /phase="[a-z]*"/); phase = substr($1, RSTART + 7, RLENGTH - 8)
            s[phase] = $2
        }
        END {printf "%d commits: prepare %.2f s, flush %.2f s, commit %.2f s, store %.2f s\n",
            n, s["prepare"], s["flush"], s["commit"], s["store"]}'
}

# Waits until the service with process id $1, serving /metrics at $2 (host:port), has
# committed $3 input records: its record-to-commit histogram counts each event once, at the
# commit of the transaction that processed it. Prints when the last transaction committed
# (epoch seconds, from the service's milestones_last_commit_timestamp_seconds), so that the
# time measured does not depend on how often this polls. It polls twice a second: every poll
# forks curl and awk on the cores the service runs on (polling every 50 ms took 0.6 s of
# curl's CPU alone during a 5 s run). Shows the service's log $4 and fails if the service
# dies first.
wait_committed() {
    local pid=$1 listen=$2 records=$3 log=$4 polled committed at
    while :; do
        sleep 0.5
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
        polled=$(curl -fsS "http://$listen/metrics" 2>/dev/null | awk '
            /^milestones_record_to_commit_seconds_count/ {n = $2}
            /^milestones_last_commit_timestamp_seconds/ {t = $2}
            END {printf "%d %s", n, t}')
        read -r committed at <<<"$polled"
        if [[ ${committed:-0} -ge $records ]]; then
            echo "$at"
            return 0
        fi
    done
}

# Writes the page cache's dirty pages to disk before a timed phase. The kernel writes a page
# back once it is 30 s old (vm.dirty_expire_centisecs): a benchmark's phases write hundreds of
# megabytes each to the broker's logs, so without this the write-back of one phase's logs,
# CPU and disk I/O, falls into a phase half a minute later, whichever that is. SETTLE=0
# skips it (to compare).
settle() { if [[ ${SETTLE:-1} != 0 ]]; then sync; fi; }

# The whole machine's busy CPU time so far, in core-seconds (/proc/stat: user, nice, system,
# irq, softirq, steal): the broker's, the registry's and the client's alike.
busy() { awk '/^cpu / {printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / 100}' /proc/stat; }

# The CPU time so far, in seconds, of one process (utime + stime, fields 14 and 15).
process_seconds() {
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    read -r -a fields <<<"${stat##*) }"
    awk -v t="$((fields[11] + fields[12]))" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'
}

# The CPU time so far, in seconds, of a JVM's JIT compiler threads (named "C1 CompilerThre..."
# and "C2 CompilerThre..." in /proc): utime + stime, fields 14 and 15 of each thread's stat.
jit_seconds() {
    local pid=$1 task ticks=0 stat fields
    for task in /proc/"$pid"/task/*; do
        [[ $(cat "$task/comm" 2>/dev/null) == C[12]\ Compiler* ]] || continue
        stat=$(cat "$task/stat" 2>/dev/null) || continue
        read -r -a fields <<<"${stat##*) }"
        ticks=$((ticks + fields[11] + fields[12]))
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'
}

# Starts `BIN run --config CONFIG` in the background, its standard error to LOG, the log
# level from RUST_LOG; its pid in $service, stopped on the script's exit unless
# stop_service stopped it before.
start_service() {
    local bin=$1 config=$2 log=$3
    "$bin" run --config "$config" 2>"$log" &
    service=$!
    trap 'kill -TERM $service 2>/dev/null || true' EXIT
}

# Stops the service start_service started (SIGTERM, by pid) and waits for it to exit.
stop_service() {
    kill -TERM "$service"
    wait "$service" || true
    trap - EXIT
}
