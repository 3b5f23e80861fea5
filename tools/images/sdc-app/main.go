// sdc-app is the one program in the images of the bundled SDC sample: an HTTP
// service that names its version and can be told to misbehave (a bad canary),
// and a minimal RESP (redis protocol) server. Standard library only, built
// statically by xci-cn's binary builder. The HTTP service exposes /metrics in
// Prometheus' text format: its requests by status code and their latency.
//
//	sdc-app http --port 9180 --name http-lb --version v2 [--upstream http://clover-server1:9180,...]
//	             [--error-ratio 0.2] [--latency 50ms] [--never-ready] [--hog-mib 256] [--exit-after 2s --exit-code 1]
//	             [--listen-after 8s]
//	sdc-app resp --port 6379
//	sdc-app resp-ping --port 6379     (an exec probe: exit 0 when the RESP server answers PONG)
//	sdc-app version
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Version of the program itself; the image tag.
const Version = "1.2.0"

func main() {
	if len(os.Args) < 2 {
		fail("usage: sdc-app http|resp|resp-ping|version [flags]")
	}
	var err error
	switch os.Args[1] {
	case "http":
		err = serveHTTP(os.Args[2:])
	case "resp":
		err = serveRESP(os.Args[2:])
	case "resp-ping":
		err = respPing(os.Args[2:])
	case "version":
		fmt.Println(Version)
	default:
		fail("sdc-app: unknown command " + strconv.Quote(os.Args[1]))
	}
	if err != nil {
		fail("sdc-app: " + err.Error())
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, message)
	os.Exit(1)
}

func signalled() context.Context {
	ctx, _ := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	return ctx
}

type httpApp struct {
	name, version string
	errorRatio    float64
	latency       time.Duration
	upstreams     []string
	next          atomic.Uint64
	client        *http.Client
	requests      atomic.Uint64
	metrics       *metrics
}

func serveHTTP(args []string) error {
	flags := flag.NewFlagSet("http", flag.ExitOnError)
	port := flags.Int("port", 8080, "TCP port")
	app := &httpApp{client: &http.Client{Timeout: 5 * time.Second}, metrics: newMetrics()}
	flags.StringVar(&app.name, "name", "sdc-app", "service name reported in responses")
	flags.StringVar(&app.version, "version", "v1", "version reported in the body and the X-Version header")
	flags.Float64Var(&app.errorRatio, "error-ratio", 0, "share of requests answered 500 (0..1)")
	flags.DurationVar(&app.latency, "latency", 0, "delay added to every request")
	upstream := flags.String("upstream", "", "comma-separated URLs to forward requests to, round robin")
	neverReady := flags.Bool("never-ready", false, "answer /readyz with 503 forever")
	hog := flags.Int("hog-mib", 0, "allocate and touch this many MiB at start (memory-limit tests)")
	exitAfter := flags.Duration("exit-after", 0, "exit after this long (crash tests)")
	exitCode := flags.Int("exit-code", 1, "exit code for --exit-after")
	listenAfter := flags.Duration("listen-after", 0, "open the port only after this long (a slow start)")
	_ = flags.Parse(args)
	app.metrics.version = app.version
	if app.errorRatio < 0 || app.errorRatio > 1 {
		return fmt.Errorf("--error-ratio %v is not within 0..1", app.errorRatio)
	}
	if *upstream != "" {
		app.upstreams = strings.Split(*upstream, ",")
	}
	if *hog > 0 {
		hogMemory(*hog)
	}
	if *exitAfter > 0 {
		time.AfterFunc(*exitAfter, func() {
			fmt.Fprintf(os.Stderr, "%s %s: exiting with %d after %v as asked\n", app.name, app.version, *exitCode, *exitAfter)
			os.Exit(*exitCode)
		})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if *neverReady {
			http.Error(w, "not ready (--never-ready)", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	// Probes and scrapes are not the service's requests: only "/" is measured.
	mux.Handle("/metrics", app.metrics)
	mux.HandleFunc("/", app.metrics.measure(app.handle))
	server := &http.Server{Addr: fmt.Sprintf(":%d", *port), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx := signalled()
	if *listenAfter > 0 {
		// A slow start: a pod without a readiness probe is Ready (and sent
		// requests) this long before it serves. A SIGTERM meanwhile ends it.
		fmt.Fprintf(os.Stderr, "%s %s (sdc-app %s) listening on :%d after %v\n", app.name, app.version, Version,
			*port, *listenAfter)
		select {
		case <-time.After(*listenAfter):
		case <-ctx.Done():
			fmt.Fprintf(os.Stderr, "%s %s: stopped before listening\n", app.name, app.version)
			return nil
		}
	}
	fmt.Fprintf(os.Stderr, "%s %s (sdc-app %s) listening on :%d\n", app.name, app.version, Version, *port)
	return runServer(ctx, server)
}

func runServer(ctx context.Context, server *http.Server) error {
	done := make(chan error, 1)
	go func() { done <- server.ListenAndServe() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return server.Shutdown(shutdown)
	}
}

func (app *httpApp) handle(w http.ResponseWriter, r *http.Request) {
	count := app.requests.Add(1)
	if app.latency > 0 {
		time.Sleep(app.latency)
	}
	w.Header().Set("X-Version", app.version)
	w.Header().Set("X-Service", app.name)
	if app.errorRatio > 0 && rand.Float64() < app.errorRatio {
		http.Error(w, fmt.Sprintf("%s %s: injected error\n", app.name, app.version), http.StatusInternalServerError)
		return
	}
	host, _ := os.Hostname()
	body := fmt.Sprintf("%s %s %s request %d path %s\n", app.name, app.version, host, count, r.URL.Path)
	if len(app.upstreams) > 0 {
		target := app.upstreams[int(app.next.Add(1))%len(app.upstreams)]
		reply, err := app.client.Get(strings.TrimSuffix(target, "/") + r.URL.Path)
		if err != nil {
			http.Error(w, fmt.Sprintf("%s %s: upstream %s: %v\n", app.name, app.version, target, err), http.StatusBadGateway)
			return
		}
		defer reply.Body.Close()
		upstream, _ := io.ReadAll(io.LimitReader(reply.Body, 1<<16))
		w.WriteHeader(reply.StatusCode)
		io.WriteString(w, body+"  via "+string(upstream))
		return
	}
	io.WriteString(w, body)
}

// Latency buckets in seconds (Prometheus' default ones).
var latencyBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// metrics counts the answered requests by status code and records their
// latency as a histogram, written by hand in the text exposition format.
type metrics struct {
	version string
	mu      sync.Mutex
	codes   map[int]uint64
	buckets []uint64 // per bucket, not cumulative; the last one is +Inf
	sum     float64
}

func newMetrics() *metrics {
	// 200 and 500 exist from the start, so that rate() sees their first increase.
	return &metrics{codes: map[int]uint64{200: 0, 500: 0}, buckets: make([]uint64, len(latencyBuckets)+1)}
}

func (m *metrics) observe(code int, seconds float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.codes[code]++
	i := sort.SearchFloat64s(latencyBuckets, seconds) // first bucket with seconds <= le
	m.buckets[i]++
	m.sum += seconds
}

// statusRecorder remembers the status code a handler answered with.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(data []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(data)
}

func (m *metrics) measure(handler http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		started := time.Now()
		recorder := &statusRecorder{ResponseWriter: w}
		handler(recorder, r)
		if recorder.code == 0 {
			recorder.code = http.StatusOK
		}
		m.observe(recorder.code, time.Since(started).Seconds())
	}
}

func (m *metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	codes := make([]int, 0, len(m.codes))
	for code := range m.codes {
		codes = append(codes, code)
	}
	sort.Ints(codes)
	var out strings.Builder
	version := labelValue(m.version)
	out.WriteString("# HELP sdc_app_requests_total Requests answered, by status code.\n")
	out.WriteString("# TYPE sdc_app_requests_total counter\n")
	for _, code := range codes {
		fmt.Fprintf(&out, "sdc_app_requests_total{code=\"%d\",version=\"%s\"} %d\n", code, version, m.codes[code])
	}
	out.WriteString("# HELP sdc_app_request_duration_seconds Time to answer a request.\n")
	out.WriteString("# TYPE sdc_app_request_duration_seconds histogram\n")
	var cumulative uint64
	for i, count := range m.buckets {
		cumulative += count
		le := "+Inf"
		if i < len(latencyBuckets) {
			le = strconv.FormatFloat(latencyBuckets[i], 'g', -1, 64)
		}
		fmt.Fprintf(&out, "sdc_app_request_duration_seconds_bucket{version=\"%s\",le=\"%s\"} %d\n", version, le, cumulative)
	}
	fmt.Fprintf(&out, "sdc_app_request_duration_seconds_sum{version=\"%s\"} %s\n", version,
		strconv.FormatFloat(m.sum, 'g', -1, 64))
	fmt.Fprintf(&out, "sdc_app_request_duration_seconds_count{version=\"%s\"} %d\n", version, cumulative)
	m.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	io.WriteString(w, out.String())
}

// labelValue escapes a label value of the text format (backslash, quote, newline).
func labelValue(value string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(value)
}

// hogMemory allocates and touches n MiB so that it counts against the cgroup.
func hogMemory(n int) {
	blocks := make([][]byte, n)
	for i := range blocks {
		blocks[i] = make([]byte, 1<<20)
		for j := 0; j < len(blocks[i]); j += 4096 {
			blocks[i][j] = 1
		}
	}
	fmt.Fprintf(os.Stderr, "holding %d MiB\n", len(blocks))
	go func() {
		for {
			time.Sleep(time.Hour)
			_ = blocks[0][0]
		}
	}()
}

// A RESP server with PING, ECHO, SET, GET, DEL, EXISTS, COMMAND and QUIT.
func serveRESP(args []string) error {
	flags := flag.NewFlagSet("resp", flag.ExitOnError)
	port := flags.Int("port", 6379, "TCP port")
	_ = flags.Parse(args)
	listener, err := net.Listen("tcp", fmt.Sprintf(":%d", *port))
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "resp (sdc-app %s) listening on :%d\n", Version, *port)
	ctx := signalled()
	go func() { <-ctx.Done(); listener.Close() }()
	store := &sync.Map{}
	for {
		conn, err := listener.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go serveRESPConn(conn, store)
	}
}

func serveRESPConn(conn net.Conn, store *sync.Map) {
	defer conn.Close()
	reader, writer := bufio.NewReader(conn), bufio.NewWriter(conn)
	for {
		command, err := readCommand(reader)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				fmt.Fprintf(writer, "-ERR %v\r\n", err)
				writer.Flush()
			}
			return
		}
		if len(command) == 0 {
			continue
		}
		switch strings.ToUpper(command[0]) {
		case "PING":
			writer.WriteString("+PONG\r\n")
		case "ECHO":
			if len(command) != 2 {
				writer.WriteString("-ERR wrong number of arguments for 'echo'\r\n")
			} else {
				writeBulk(writer, command[1])
			}
		case "SET":
			if len(command) < 3 {
				writer.WriteString("-ERR wrong number of arguments for 'set'\r\n")
			} else {
				store.Store(command[1], command[2])
				writer.WriteString("+OK\r\n")
			}
		case "GET":
			if len(command) != 2 {
				writer.WriteString("-ERR wrong number of arguments for 'get'\r\n")
			} else if value, ok := store.Load(command[1]); ok {
				writeBulk(writer, value.(string))
			} else {
				writer.WriteString("$-1\r\n")
			}
		case "DEL", "EXISTS":
			count := 0
			for _, key := range command[1:] {
				if _, ok := store.Load(key); ok {
					count++
					if strings.EqualFold(command[0], "DEL") {
						store.Delete(key)
					}
				}
			}
			fmt.Fprintf(writer, ":%d\r\n", count)
		case "COMMAND":
			writer.WriteString("*0\r\n")
		case "QUIT":
			writer.WriteString("+OK\r\n")
			writer.Flush()
			return
		default:
			fmt.Fprintf(writer, "-ERR unknown command '%s'\r\n", command[0])
		}
		if reader.Buffered() == 0 {
			writer.Flush()
		}
	}
}

func writeBulk(w *bufio.Writer, value string) {
	fmt.Fprintf(w, "$%d\r\n%s\r\n", len(value), value)
}

// readCommand reads one RESP array of bulk strings, or an inline command.
func readCommand(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if !strings.HasPrefix(line, "*") {
		return strings.Fields(line), nil
	}
	count, err := strconv.Atoi(line[1:])
	if err != nil || count < 0 || count > 1024 {
		return nil, fmt.Errorf("bad array length %q", line)
	}
	parts := make([]string, 0, count)
	for i := 0; i < count; i++ {
		header, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		header = strings.TrimRight(header, "\r\n")
		if !strings.HasPrefix(header, "$") {
			return nil, fmt.Errorf("expected a bulk string, got %q", header)
		}
		size, err := strconv.Atoi(header[1:])
		if err != nil || size < 0 || size > 1<<20 {
			return nil, fmt.Errorf("bad bulk length %q", header)
		}
		data := make([]byte, size+2)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, err
		}
		parts = append(parts, string(data[:size]))
	}
	return parts, nil
}

func respPing(args []string) error {
	flags := flag.NewFlagSet("resp-ping", flag.ExitOnError)
	port := flags.Int("port", 6379, "TCP port")
	_ = flags.Parse(args)
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", *port), 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(reply) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(reply))
	}
	return nil
}
